"""Scoring-core benchmark (not a test): batching speed-up and scorer overhead over the bare model call.

Measures, on a tiny random-weight model (no download) and identical inputs:
  * images/s of ``q-align`` at batch 1 vs batch 8 (ratio),
  * scorer time vs the bare ``processor(...)`` + ``model(**inputs, logits_to_keep=1)`` at batch 8
    (overhead ratio; target <= 1.15),
  * the share of image decoding (from files) and of preprocessing (processor) in the scorer's time.

Timings are medians over repeats measured in one run; only ratios are meaningful on a shared machine.

    python benchmarks/bench_scoring.py [--arch qwen2_5_vl] [--n 32] [--repeats 5] [--size 448x336]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="qwen2_5_vl")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", default="448x336", help="image size WxH written to disk")
    args = ap.parse_args()

    import torch

    import lmmiqa
    from lmmiqa.images import open_image
    from lmmiqa.testing import make_image, make_tiny_vlm

    torch.set_num_threads(max(1, torch.get_num_threads()))
    w, h = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_vlm(args.arch, Path(tmp) / "model")
        paths = []
        for i in range(args.n):
            p = Path(tmp) / f"img{i:03d}.jpg"
            make_image(w - (i % 3) * 16, h - (i % 2) * 16, i).save(p, quality=92)
            paths.append(str(p))
        pil = [open_image(p) for p in paths]

        scorer = lmmiqa.create_scorer("q-align", model=str(model_dir), device="cpu")
        backend = scorer.backend
        scorer.score(pil[:8], batch_size=8)  # warm-up

        b1b8 = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            scorer.score(pil, batch_size=1)
            t1 = time.perf_counter()
            scorer.score(pil, batch_size=8)
            b1b8.append((t1 - t0, time.perf_counter() - t1))
        t_b1 = statistics.median(a for a, _ in b1b8)
        t_b8 = statistics.median(b for _, b in b1b8)
        speedup = statistics.median(a / b for a, b in b1b8)
        t_files = _median_time(lambda: scorer.score(paths, batch_size=8), args.repeats)
        t_decode = _median_time(lambda: [open_image(p) for p in paths], args.repeats)

        prompts = [scorer.build_prompt(im) for im in pil]
        cands = scorer.level_scale.candidates(prompts[0].answer_prefix)
        ids = backend.token_ids(cands, prompts[0].answer_prefix)

        def bare() -> None:
            for s in range(0, len(pil), 8):
                chunk = pil[s : s + 8]
                conv = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How would you rate the quality of this image?"}]}]] * len(chunk)
                text = [backend.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) + "The quality of the image is" for c in conv]
                inputs = backend.processor(text=text, images=chunk, padding=True, return_tensors="pt")
                with torch.inference_mode():
                    logits = backend.model(**inputs, logits_to_keep=1).logits[:, -1, :]
                    torch.log_softmax(logits.float(), -1)[:, ids]

        def preprocess() -> None:
            for s in range(0, len(prompts), 8):
                backend.encode(prompts[s : s + 8])

        # interleave the compared measurements so that load from other processes hits both alike
        pairs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            scorer.score(pil, batch_size=8)
            t1 = time.perf_counter()
            bare()
            t2 = time.perf_counter()
            preprocess()
            t3 = time.perf_counter()
            pairs.append((t1 - t0, t2 - t1, t3 - t2))
        overhead = statistics.median(a / b for a, b, _ in pairs)
        pre_share = statistics.median(c / a for a, _, c in pairs)
        t_bare = statistics.median(b for _, b, _ in pairs)

    n = args.n
    rows = [
        ("q-align batch 1 (images/s)", f"{n / t_b1:.1f}"),
        ("q-align batch 8 (images/s)", f"{n / t_b8:.1f}"),
        ("batch 8 / batch 1 speed-up", f"{speedup:.2f}x"),
        ("bare processor+model batch 8 (images/s)", f"{n / t_bare:.1f}"),
        ("scorer / bare time at batch 8 (overhead)", f"{overhead:.3f} (target <= 1.15)"),
        ("scoring from files, batch 8 (images/s)", f"{n / t_files:.1f}"),
        ("share of image decoding in scoring from files", f"{t_decode / t_files:.1%}"),
        ("share of preprocessing (processor) in scorer time", f"{pre_share:.1%}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"tiny {args.arch}, {n} images of ~{args.size}, CPU threads {torch.get_num_threads()}, median of {args.repeats}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
