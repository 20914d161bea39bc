"""LLM-IQA benchmark (not a test): cost of mix-grained scoring and what batching crops saves.

On a tiny random-weight VLM (no download) and identical in-memory images, with the weight-free Felzenszwalb
segmenter by default (``--segmenter sam2`` uses a tiny random-weight SAM 2 instead), it measures:

  * prompts (sequences) and model forward calls per image, and images/s, of ``llm-iqa`` vs ``standard-guided``
    (the global score alone) on the same model and images (the ratio is the price of the regions);
  * ``llm-iqa`` three ways: one forward per prompt (``max_batch=1``, a per-crop loop), one call per image
    (``batch_size=1``: an image's crops share a forward), and crops of all images of a batch together
    (``batch_size=--batch``, the default path) — forwards per image and images/s for each;
  * the share of segmentation in ``llm-iqa``'s time.

Timings are medians over repeats measured in one run; only ratios are meaningful on a shared machine.

    python benchmarks/bench_llm_iqa.py [--arch qwen2_5_vl] [--n 16] [--batch 8] [--repeats 3] [--size 448x336]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


class ForwardCounter:
    """Counts forward calls and sequences of a transformers model (a pre-forward hook)."""

    def __init__(self, model: Any) -> None:
        self.calls = 0
        self.sequences = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids")
        self.calls += 1
        self.sequences += int(ids.shape[0]) if ids is not None else 1

    def reset(self) -> None:
        self.calls = self.sequences = 0

    def close(self) -> None:
        self._handle.remove()


def _run(
    scorer: Any, images: list[Any], batch: int, repeats: int, counter: ForwardCounter
) -> dict[str, float]:
    scorer.score(images[: min(len(images), batch)], batch_size=batch)  # warm-up
    times = []
    for _ in range(repeats):
        counter.reset()
        t0 = time.perf_counter()
        results = scorer.score(images, batch_size=batch)
        times.append(time.perf_counter() - t0)
        bad = [r.error for r in results if not r.ok]
        if bad:
            raise SystemExit(f"scoring failed: {bad[0]}")
    seg = statistics.median([r.timings.get("segment", 0.0) for r in results]) * len(images)
    t = statistics.median(times)
    n = len(images)
    return {
        "seconds": t,
        "images_per_s": n / t,
        "calls_per_image": counter.calls / n,
        "prompts_per_image": counter.sequences / n,
        "segment_share": seg / t,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="qwen2_5_vl")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", default="448x336", help="image size WxH")
    ap.add_argument("--segmenter", default="felzenszwalb", choices=["felzenszwalb", "sam2"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import lmmiqa
    from lmmiqa.testing import make_image, make_tiny_vlm

    w, h = (int(x) for x in args.size.split("x"))
    images = [make_image(w - (i % 3) * 16, h - (i % 2) * 16, i) for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(make_tiny_vlm(args.arch, Path(tmp) / "model"))
        seg_opts: dict[str, Any] = {}
        if args.segmenter == "sam2":
            from lmmiqa.segment.testing import make_tiny_sam2

            seg_opts = {
                "model": make_tiny_sam2(Path(tmp) / "sam2", image_size=64),
                "points_per_side": 4,
                "pred_iou_thresh": 0.0,
                "stability_score_thresh": 0.0,
                "max_masks": 7,
            }
        common = {"model": model_dir, "device": args.device}
        llm = {**common, "segmenter": args.segmenter, "segmenter_options": seg_opts}

        sg = lmmiqa.create_scorer("standard-guided", **common)
        counter = ForwardCounter(sg.backend.model)
        rows = {"standard-guided (batch)": _run(sg, images, args.batch, args.repeats, counter)}
        scorer = lmmiqa.create_scorer("llm-iqa", **llm)
        rows["llm-iqa crops across images (batch)"] = _run(scorer, images, args.batch, args.repeats, counter)
        rows["llm-iqa one call per image"] = _run(scorer, images, 1, args.repeats, counter)
        counter.close()
        per_prompt = lmmiqa.create_scorer("llm-iqa", **llm, backend_options={"max_batch": 1})
        counter = ForwardCounter(per_prompt.members[0].backend.model)
        rows["llm-iqa one forward per prompt"] = _run(per_prompt, images, args.batch, args.repeats, counter)
        counter.close()

    print(
        f"{args.n} images ~{args.size}, tiny {args.arch}, segmenter {args.segmenter}, batch {args.batch}, "
        f"backend max_batch 32, median of {args.repeats}"
    )
    print(f"{'mode':40s} {'img/s':>8s} {'prompts/img':>12s} {'forwards/img':>13s} {'segment %':>10s}")
    for name, r in rows.items():
        print(
            f"{name:40s} {r['images_per_s']:8.2f} {r['prompts_per_image']:12.2f} {r['calls_per_image']:13.3f} "
            f"{100 * r['segment_share']:9.1f}%"
        )
    base = rows["standard-guided (batch)"]
    batched = rows["llm-iqa crops across images (batch)"]
    per_image = rows["llm-iqa one call per image"]
    per_prompt_r = rows["llm-iqa one forward per prompt"]
    print(
        f"llm-iqa / standard-guided: {batched['prompts_per_image'] / base['prompts_per_image']:.2f}x prompts, "
        f"{base['images_per_s'] / batched['images_per_s']:.2f}x slower"
    )
    print(
        f"crops across images vs one call per image: {per_image['calls_per_image'] / batched['calls_per_image']:.2f}x "
        f"fewer forwards, {batched['images_per_s'] / per_image['images_per_s']:.2f}x faster"
    )
    print(
        f"crops across images vs one forward per prompt: "
        f"{per_prompt_r['calls_per_image'] / batched['calls_per_image']:.2f}x fewer forwards, "
        f"{batched['images_per_s'] / per_prompt_r['images_per_s']:.2f}x faster"
    )


if __name__ == "__main__":
    main()
