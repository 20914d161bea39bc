"""Q-Scorer benchmark (not a test): training-step time and peak memory with and without gradient checkpointing,
and inference images/s of ``q-scorer`` relative to ``q-align`` on the same model.

Measures, on a tiny random-weight model (no download) unless ``--model`` names a local folder:

* one optimizer step of the real training code (:func:`lmmiqa.training.q_scorer.build_trainable` +
  :func:`~lmmiqa.training.q_scorer.batch_loss` + backward + AdamW), median over ``--steps`` steps after a
  warm-up, with ``gradient_checkpointing`` off and on. Memory, two ways: the bytes of activations autograd
  keeps for the backward pass (distinct non-weight storages seen by ``saved_tensors_hooks``: exact and
  allocator-independent), and the peak during the steps: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the
  growth of the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` after set-up),
  which on a tiny model is dominated by allocator noise. Each setting runs in a fresh subprocess.
* images/s of ``q-scorer`` (an adapter trained for one step on the same model; LoRA unmerged, LoRA merged at
  load, and the merged export) and of ``q-align``, interleaved, median over ``--repeats``; ratios to q-align.

Timings are medians measured in one run; only ratios are meaningful on a shared machine.

    python benchmarks/bench_q_scorer.py [--arch qwen2_5_vl] [--model DIR] [--device cpu] [--n 32] [--batch 4]
                                        [--size 448x336] [--steps 5] [--repeats 3] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _images(n: int, size: str, folder: Path) -> list[str]:
    from lmmiqa.testing import make_image

    w, h = (int(x) for x in size.split("x"))
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        make_image(max(16, w - (i % 3) * 16), max(16, h - (i % 2) * 16), seed=i).save(p)
        paths.append(str(p))
    return paths


def child_train_step(args: argparse.Namespace) -> dict:
    """One setting (gradient checkpointing on or off) in this process; returns its measurements."""
    import numpy as np
    import torch

    from lmmiqa.images import load_input
    from lmmiqa.training.q_scorer import QScorerTrainConfig, batch_loss, build_trainable

    folder = Path(args.workdir)
    paths = sorted(str(p) for p in (folder / "images").glob("*.png"))[: args.batch]
    images = [load_input(p) for p in paths]
    quality = list(np.linspace(1.0, 5.0, len(images)))
    cfg = QScorerTrainConfig(model=args.model, tokens=5, batch_size=args.batch, device=args.device,
                             dtype=args.dtype, gradient_checkpointing=args.gc == "on", lora_dropout=0.0,
                             head_dims=tuple(int(x) for x in args.head_dims.split(",")) if args.head_dims else ())
    torch.manual_seed(0)
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if args.device.startswith("cuda") else "float32")
    tq = build_trainable(cfg, device=args.device, dtype=dtype, mos_range=(1.0, 5.0))
    opt = torch.optim.AdamW([p for p in tq.net.parameters() if p.requires_grad], lr=1e-4)
    cuda = args.device.startswith("cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=getattr(torch, dtype))) if cuda and dtype != "float32" else None

    def step() -> None:
        loss, _, _ = batch_loss(tq.net, tq, images, quality, autocast=autocast)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up (optimizer state allocated here)

    # activation memory, exactly: bytes of the distinct non-parameter storages autograd keeps for the backward
    # pass of one forward (tensors inside checkpointed layers are not kept, so they do not show up here)
    weights = {t.untyped_storage().data_ptr() for t in [*tq.net.parameters(), *tq.net.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = batch_loss(tq.net, tq, images, quality, autocast=autocast)
    loss.backward()
    opt.zero_grad(set_to_none=True)
    activations = sum(saved.values())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_ok = _reset_peak_rss()
        base = _rss_kib("VmRSS") * 1024
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        how = "torch.cuda.max_memory_allocated - allocated before the steps"
    else:
        peak = _rss_kib("VmHWM") * 1024
        how = "peak RSS (VmHWM) during the steps - RSS before them" + ("" if reset_ok else " (peak reset unavailable)")
    return {"gradient_checkpointing": args.gc == "on", "step_s_median": statistics.median(times),
            "step_s_all": times, "peak_extra_mb": (peak - base) / 2**20, "memory_measure": how,
            "saved_activations_mb": activations / 2**20,
            "batch": len(images), "device": args.device, "dtype": dtype}


def _median_interleaved(fns: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="qwen2_5_vl", help="tiny architecture to build when --model is not given")
    ap.add_argument("--model", default=None, help="local model folder instead of a tiny random-weight model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--n", type=int, default=32, help="images scored in the inference comparison")
    ap.add_argument("--batch", type=int, default=4, help="training batch size")
    ap.add_argument("--infer-batch", type=int, default=8, help="inference batch size")
    ap.add_argument("--size", default="448x336", help="image size WxH")
    ap.add_argument("--head-dims", default="2048,1024", help="head widths (reference 2048,1024)")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per setting")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the inference comparison")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--_child", choices=("train",), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gc", choices=("on", "off"), default="off", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child == "train":
        print(json.dumps(child_train_step(args)))
        return

    import lmmiqa
    from lmmiqa.images import open_image
    from lmmiqa.testing import make_tiny_vlm
    from lmmiqa.training.q_scorer import QScorerTrainConfig, train_q_scorer
    from lmmiqa.training.q_scorer_model import export_merged

    with tempfile.TemporaryDirectory(prefix="bench-q-scorer-") as tmp:
        work = Path(tmp)
        model = args.model or str(make_tiny_vlm(args.arch, work / "model"))
        (work / "images").mkdir()
        paths = _images(max(args.n, args.batch), args.size, work / "images")

        # ---- training step, gradient checkpointing off/on, each in a fresh process
        train_rows = []
        for gc in ("off", "on"):
            cmd = [sys.executable, __file__, "--_child", "train", "--gc", gc, "--workdir", str(work), "--model", model,
                   "--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--head-dims", args.head_dims, "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                raise SystemExit(f"training-step child failed:\n{proc.stderr[-3000:]}")
            train_rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

        # ---- inference: q-scorer (adapter from one training step) vs q-align on the same model
        adapter = work / "adapter"
        cfg = QScorerTrainConfig(model=model, tokens=5, epochs=1, batch_size=args.batch, max_steps=1,
                                 device="cpu" if args.device == "cpu" else "cuda", dtype=args.dtype,
                                 head_dims=tuple(int(x) for x in args.head_dims.split(",")) if args.head_dims else (),
                                 progress=False, decode_workers=0, mos_range=(1.0, 5.0))
        train_q_scorer([(p, 1.0 + 4.0 * i / max(len(paths) - 1, 1)) for i, p in enumerate(paths)], adapter, cfg)
        merged = export_merged(adapter, work / "merged", device=args.device)
        pil = [open_image(p) for p in paths[: args.n]]
        common = {"device": args.device, "dtype": args.dtype}
        scorers = {
            "q-align": lmmiqa.create_scorer("q-align", model=model, **common),
            "q-scorer (adapter)": lmmiqa.create_scorer("q-scorer", adapter=str(adapter), **common),
            "q-scorer (merge at load)": lmmiqa.create_scorer("q-scorer", adapter=str(adapter), merge_lora=True, **common),
            "q-scorer (merged export)": lmmiqa.create_scorer("q-scorer", adapter=str(merged), **common),
        }
        for s in scorers.values():
            s.score(pil[: args.infer_batch], batch_size=args.infer_batch)  # load + warm-up
        fns = {k: (lambda s=s: s.score(pil, batch_size=args.infer_batch)) for k, s in scorers.items()}
        med = _median_interleaved(fns, args.repeats)
        ips = {k: len(pil) / v for k, v in med.items()}

    results = {
        "model": args.model or f"tiny {args.arch} (random weights)",
        "image_size": args.size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_step": train_rows,
        "gc_time_ratio": train_rows[1]["step_s_median"] / train_rows[0]["step_s_median"],
        "gc_activation_ratio": train_rows[1]["saved_activations_mb"] / train_rows[0]["saved_activations_mb"],
        "inference_images_per_s": ips,
        "inference_ratio_to_q_align": {k: v / ips["q-align"] for k, v in ips.items()},
        "inference_batch": args.infer_batch,
        "n_images": len(pil),
    }
    print(f"model: {results['model']}, images {args.size}, device {args.device}, torch threads {results['threads']}")
    print(f"training step (batch {args.batch}):")
    for r in train_rows:
        print(f"  gradient checkpointing {'on ' if r['gradient_checkpointing'] else 'off'}: "
              f"{r['step_s_median'] * 1000:8.1f} ms/step, saved activations {r['saved_activations_mb']:8.2f} MB, "
              f"peak extra memory {r['peak_extra_mb']:8.1f} MB")
    print(f"  on/off ratios: time {results['gc_time_ratio']:.2f}, saved activations {results['gc_activation_ratio']:.2f}"
          f"  (peak: {train_rows[0]['memory_measure']})")
    print(f"inference (batch {args.infer_batch}, {len(pil)} images):")
    for k, v in ips.items():
        print(f"  {k:26s} {v:8.1f} images/s   ratio to q-align {results['inference_ratio_to_q_align'][k]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
