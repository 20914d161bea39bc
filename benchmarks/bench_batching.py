"""Token-budget batching and the pixel budget, measured on LLM-IQA (not a test).

LLM-IQA sends each batch's whole images and all their region crops to the backend in one call. Before, the
backend cut that call into fixed chunks of ``max_batch`` (32) prompts in input order, every prompt padded to the
longest of its chunk; now (:mod:`lmmiqa.backends.planner`) prompts are sorted by length and cut by a token
budget with padding ≤ 1.25× the real positions. This script scores 16 photos of mixed sizes (1024×768 to
4000×3000, from scikit-image's sample photos, resized) with LLM-IQA (weight-free Felzenszwalb regions, batch 8)
on the shrunken random-weight Qwen3-VL-8B (real tokenizer, template and processor; CPU) and reports per
configuration:

* **padded / real positions** over the run (real = attention-mask ones; padded = batch × padded length);
* **largest forward**: the most padded positions one forward held (what the activation memory scales with);
* **peak RSS** of the scoring process (``VmHWM``, reset after the model is loaded and the inputs decoded once),
  and wall time;
* image tokens per image (the ``--max-pixels`` effect).

Configurations: ``before`` = ``--max-batch-tokens 0`` (the old fixed chunks), ``after`` = the default budget
(from free memory) or an explicit one; each at ``--max-pixels model`` (the checkpoint's 16.8 M-pixel limit) and
at the 1024×1024 default. Configurations at the checkpoint's limit are planned but not run by default (one
4000×3000 image is 11,750 tokens and ~1 min of CPU in the vision tower of even the shrunken model; ``--run-model``
runs them): their positions are computed from the processor's token counts, exactly as the backend plans.
Each run happens in a fresh subprocess so that peak RSS is its own.

    python benchmarks/bench_batching.py [--n 16] [--batch-size 8] [--run-model]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = [
    (1024, 768), (4000, 3000), (1280, 960), (2048, 1536), (768, 1024), (3264, 2448), (1600, 1200), (4000, 3000),
    (1024, 768), (2560, 1920), (1440, 1080), (3000, 4000), (1920, 1440), (1024, 768), (3000, 2250), (4000, 3000),
]

CONFIGS: dict[str, dict[str, Any]] = {
    "before, --max-pixels model": {"max_pixels": "model", "max_batch_tokens": 0},
    "after, --max-pixels model": {"max_pixels": "model"},
    "before, default --max-pixels (1024x1024)": {"max_batch_tokens": 0},
    "after, default --max-pixels (1024x1024)": {},
    "after, --max-batch-tokens 4096": {"max_batch_tokens": 4096},
    "after, --max-pixels 512*512": {"max_pixels": "512*512"},
}


def make_inputs(folder: Path, n: int) -> list[str]:
    from PIL import Image

    from lmmiqa.images import sample_images

    photos = [im for _, im in sample_images()]
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        src = photos[i % len(photos)]
        p = folder / f"img{i:02d}_{w}x{h}.jpg"
        src.resize((w, h), Image.BICUBIC).save(p, quality=92)
        paths.append(str(p))
    return paths


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _vm(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(model: str, paths: list[str], options: dict[str, Any], batch_size: int, execute: bool) -> dict[str, Any]:
    """One configuration in this (fresh) process."""
    import lmmiqa
    from lmmiqa.backends.planner import padding_stats, plan_batches
    from lmmiqa.images import ImageLimits, load_many

    scorer = lmmiqa.create_scorer("llm-iqa", model=model, device="cpu", segmenter="felzenszwalb",
                                  batch_size=batch_size, **options)
    backend = scorer.members[0].backend
    items = load_many(paths, ImageLimits())
    # planned positions, exactly as the backend plans each call (one call per batch of images)
    budget = backend.max_batch_tokens()
    real = padded = largest = n_prompts = forwards = 0
    tokens_per_image: list[int] = []
    for s in range(0, len(items), batch_size):
        _plans, prompts, _ = scorer.plan(items[s : s + batch_size])
        counts = backend.prompt_token_counts(prompts)
        lengths = [c["tokens"] for c in counts]
        tokens_per_image += [c["image_tokens"] for c in counts[: len(_plans)]]
        groups = plan_batches(lengths, budget, max_batch=backend.config.max_batch)
        r, p = padding_stats(lengths, groups)
        real, padded, n_prompts, forwards = real + r, padded + p, n_prompts + len(prompts), forwards + len(groups)
        largest = max(largest, *(len(g) * max(lengths[i] for i in g) for g in groups))
    out: dict[str, Any] = {
        "budget": budget, "prompts": n_prompts, "forwards": forwards, "real": real, "padded": padded,
        "largest": largest, "image_tokens": tokens_per_image, "ran": False,
    }
    if not execute:
        return out
    scorer.score(paths[:1])  # warm-up (allocator, lazy imports)
    backend.stats.update(forwards=0, prompts=0, real_tokens=0, padded_tokens=0)
    base_rss = _vm("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    results = scorer.score(paths)
    out.update(
        ran=True,
        seconds=time.perf_counter() - t0,
        ok=sum(r.ok for r in results),
        measured_real=backend.stats["real_tokens"],
        measured_padded=backend.stats["padded_tokens"],
        measured_forwards=backend.stats["forwards"],
        rss_before=base_rss,
        peak_rss=_vm("VmHWM") if reset else None,
        scores=[r.score for r in results],
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--run-model", action="store_true", help="also run the configurations at the checkpoint's limit")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(child(spec["model"], spec["paths"], spec["options"], spec["batch_size"], spec["execute"])))
        return

    from lmmiqa.testing import real_file_vlm_cached

    model = real_file_vlm_cached("Qwen3-VL-8B-Instruct")
    if model is None:
        sys.exit("the real Qwen3-VL-8B-Instruct files are not here (shared/data/hf)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp), args.n)
        for name, options in CONFIGS.items():
            execute = args.run_model or options.get("max_pixels") != "model"
            spec = {"model": str(model), "paths": paths, "options": options, "batch_size": args.batch_size,
                    "execute": execute}
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{name}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            res = json.loads(line[len("RESULT "):])
            rows.append((name, res))
            print(f"# {name}: {json.dumps({k: v for k, v in res.items() if k != 'scores'})}", file=sys.stderr)

    load = os.getloadavg()[0]
    print(f"LLM-IQA (felzenszwalb regions, batch {args.batch_size}) on {args.n} photos 1024x768..4000x3000, shrunken "
          f"Qwen3-VL-8B (real processor), CPU, load average {load:.1f}\n")
    print("| configuration | budget (tokens) | prompts | forwards | padded / real | largest forward (positions) "
          "| image tokens / image (median, max) | peak RSS (GiB) | time (s) |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for name, r in rows:
        toks = sorted(r["image_tokens"])
        ratio = r["padded"] / r["real"]
        if r["ran"]:
            ratio_txt = f"{r['measured_padded'] / r['measured_real']:.3f}"
            peak = f"{r['peak_rss'] / 2**30:.2f}" if r["peak_rss"] else "n/a"
            secs = f"{r['seconds']:.0f}"
        else:
            ratio_txt, peak, secs = f"{ratio:.3f} (planned)", "not run", "not run"
        print(f"| {name} | {r['budget'] or 'off'} | {r['prompts']} | {r['forwards']} | {ratio_txt} | {r['largest']:,} "
              f"| {toks[len(toks) // 2]:,}, {toks[-1]:,} | {peak} | {secs} |")
    base = dict(rows)
    a, b = base.get("after, default --max-pixels (1024x1024)"), base.get("before, default --max-pixels (1024x1024)")
    if a and b and a["ran"] and b["ran"]:
        import numpy as np

        diff = float(np.max(np.abs(np.array(a["scores"]) - np.array(b["scores"]))))
        print(f"\nlargest score difference after vs before (same inputs, other batching): {diff:.2e}")


if __name__ == "__main__":
    main()
