"""Scoring-core benchmark (not a test): batching speed-up and scorer overhead over the bare model call.

Measures, on a tiny random-weight model (no download) and identical inputs:
  * images/s of ``q-align`` at batch 1 vs batch 8 (ratio),
  * scorer time vs the bare ``processor(...)`` + ``model(**inputs, logits_to_keep=1)`` at batch 8
    (overhead ratio; target <= 1.15),
  * the share of image decoding (from files) and of preprocessing (processor) in the scorer's time.

Timings are medians over repeats measured in one run; only ratios are meaningful on a shared machine.

``--prefetch`` measures instead what overlapping the CPU with the forward gains when scoring JPEG files with the
shrunken real-file Qwen3-VL-8B (real processor, CPU): decoding the next batch in a background thread
(``ScorerConfig.prefetch``) and encoding the next forward of a call while the current one runs (the transformers
backend's ``encode_ahead``), both on vs both off, interleaved, plus the share of decoding in the scorer's time.

    python benchmarks/bench_scoring.py [--arch qwen2_5_vl] [--n 32] [--repeats 5] [--size 448x336]
    python benchmarks/bench_scoring.py --prefetch [--n 16] [--repeats 3] [--size 2048x1536] [--batch-size 4]
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


def bench_prefetch(n: int, repeats: int, size: str, batch_size: int, method: str = "q-align") -> None:
    """Scoring JPEG files on the shrunken real-file Qwen3-VL with the CPU/forward overlap on (decode-ahead across
    batches + encode-ahead across the forwards of a call) vs off (interleaved repeats)."""
    import os

    import torch
    from PIL import Image

    import lmmiqa
    from lmmiqa.images import open_image, sample_images
    from lmmiqa.testing import real_file_vlm_cached

    model = real_file_vlm_cached("Qwen3-VL-8B-Instruct")
    if model is None:
        raise SystemExit("the real Qwen3-VL-8B-Instruct files are not here (shared/data/hf)")
    w, h = (int(x) for x in size.split("x"))
    photos = [im for _, im in sample_images()]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):
            p = Path(tmp) / f"img{i:03d}.jpg"
            photos[i % len(photos)].resize((w - (i % 3) * 32, h - (i % 2) * 32), Image.BICUBIC).save(p, quality=92)
            paths.append(str(p))
        extra = {"segmenter": "felzenszwalb"} if method == "llm-iqa" else {}
        on = lmmiqa.create_scorer(method, model=str(model), device="cpu", batch_size=batch_size, **extra)
        off = lmmiqa.create_scorer(method, model=str(model), device="cpu", batch_size=batch_size, prefetch=False,
                                   backend_options={"encode_ahead": False}, **extra)
        on.score(paths[:batch_size])  # warm-up
        off.score(paths[:batch_size])
        pairs, same = [], True
        for _ in range(repeats):
            t0 = time.perf_counter()
            r_on = on.score(paths)
            t1 = time.perf_counter()
            r_off = off.score(paths)
            t2 = time.perf_counter()
            pairs.append((t1 - t0, t2 - t1))
            same = same and [(r.image, r.score) for r in r_on] == [(r.image, r.score) for r in r_off]
        t_decode = _median_time(lambda: [open_image(p) for p in paths], repeats)
    t_on = statistics.median(a for a, _ in pairs)
    t_off = statistics.median(b for _, b in pairs)
    gain = statistics.median(b / a for a, b in pairs)
    rows = [
        ("overlap off (images/s)", f"{n / t_off:.2f}"),
        ("overlap on (images/s)", f"{n / t_on:.2f}"),
        ("speed-up (off time / on time)", f"{gain:.3f}x"),
        ("share of JPEG decoding in the overlap-off time", f"{t_decode / t_off:.1%}"),
        ("identical results and order", str(same)),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"shrunken real-file Qwen3-VL-8B, {method}, {n} JPEGs of ~{size}, batch {batch_size}, CPU threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, median of {repeats}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="qwen2_5_vl")
    ap.add_argument("--n", type=int, default=None, help="images (default 32; 16 with --prefetch)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 5; 3 with --prefetch)")
    ap.add_argument("--size", default=None, help="image size WxH written to disk (default 448x336; 2048x1536 with --prefetch)")
    ap.add_argument("--prefetch", action="store_true", help="measure background decoding on the real-file model")
    ap.add_argument("--batch-size", type=int, default=4, help="--prefetch: images per batch (default 4)")
    ap.add_argument("--method", default="q-align", help="--prefetch: q-align (default) or llm-iqa")
    args = ap.parse_args()
    if args.prefetch:
        bench_prefetch(args.n or 16, args.repeats or 3, args.size or "2048x1536", args.batch_size, args.method)
        return
    args.n, args.repeats, args.size = args.n or 32, args.repeats or 5, args.size or "448x336"

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
