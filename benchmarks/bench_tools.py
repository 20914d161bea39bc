"""Classical tools benchmark (not a test): lmmiqa vs pyiqa, CPU time per image at three sizes (issue 25).

How it measures (so that the comparison is fair on a shared machine):

* Each library runs in its own long-lived worker process, one thread each (``OMP/MKL/OPENBLAS_NUM_THREADS=1``,
  ``torch.set_num_threads(1)``): lmmiqa in this interpreter, pyiqa in ``--pyiqa-python`` (default
  ``$LMMIQA_PYIQA_PYTHON``; pyiqa needs torchvision, which the project venv must not have). Without it the pyiqa
  column is skipped with a message.
* Calls are interleaved image by image (lmmiqa, pyiqa, then pyiqa, lmmiqa for the next image...), so that the
  load of a shared machine hits both alike. Each worker is warmed up with ``--warmup`` untimed calls per cell
  (parameter files, page faults and malloc's thresholds right after import or a size change).
* Each library is fed the way its users feed it: lmmiqa ``get_tool(name).compute(uint8 H×W×3 array[, ref])``
  (the public API); pyiqa ``metric(x[, ref])`` with contiguous float32 N×C×H×W tensors in [0, 1] — the layout
  pyiqa's own image loader produces (see :func:`to_pyiqa_tensor`).
* Time: the worker thread's CPU time (``time.thread_time``) around the call only; medians and the interquartile
  range per cell; the ratio is pyiqa's median / lmmiqa's median. Each cell runs passes over the images until its
  time budget (``--budget`` seconds) is spent, at least one pass. The 1-minute load average is sampled after
  every cell and reported (min / max).
* Images: ``--count`` (default 10) real photos — the TID2013 calibration references in
  ``../shared/data/images/calibration`` when present, else lmmiqa's built-in sample photos — resized (PIL
  bicubic) to each size; the distorted image is the photo with Gaussian noise (σ = 8) and a JPEG round trip.
* Values: the median relative difference lmmiqa vs pyiqa per cell is printed beside the speed. pyiqa downloads
  NIQE/BRISQUE parameters at first use; offline they are written from lmmiqa's shipped files (NIQE: the same
  official pristine model; BRISQUE: the official SVR in pyiqa's format, same work, values not comparable).

    python benchmarks/bench_tools.py [--count 10] [--budget 4] [--sizes 512x384 ...] [--tools niqe ...]
        [--pyiqa-python PATH] [--json OUT.json]
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread everywhere (set before numpy loads; not when imported by a test)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TOOLS = ("niqe", "brisque", "piqe", "psnr", "gmsd", "ssim", "ms_ssim")
SIZES = ("512x384", "1024x768", "2048x1536")
#: pyiqa metric names matching lmmiqa's tools
PYIQA = {"niqe": "niqe", "brisque": "brisque", "piqe": "piqe", "psnr": "psnr", "ssim": "ssim",
         "ms_ssim": "ms_ssim", "gmsd": "gmsd"}
FR_TOOLS = frozenset({"psnr", "ssim", "ms_ssim", "gmsd"})
LIBS = ("lmmiqa", "pyiqa")


# --------------------------------------------------------------------------------------------------- schedule
def call_order(i: int) -> tuple[str, str]:
    """Which library is called first for image ``i``: swapped every other image."""
    return LIBS if i % 2 == 0 else (LIBS[1], LIBS[0])


def schedule(count: int, passes: int, start: int = 0) -> Iterator[tuple[int, str]]:
    """``(image index, library)`` calls of ``passes`` passes over ``count`` images, interleaved image by image
    with the order swapped every other image; ``start`` continues the alternation of earlier passes."""
    k = start
    for _ in range(passes):
        for i in range(count):
            for lib in call_order(k):
                yield i, lib
            k += 1


def to_pyiqa_tensor(hwc: np.ndarray) -> Any:
    """A uint8 H×W×3 array as pyiqa's loader makes it: contiguous float32 1×3×H×W in [0, 1]."""
    import torch

    return (torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1)[None].float() / 255.0).contiguous()


# ----------------------------------------------------------------------------------------------------- images
def load_images(size: str, count: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """``count`` (distorted, reference) uint8 pairs at ``size`` ("W×H") and a description of the source."""
    from PIL import Image

    w, h = (int(v) for v in size.split("x"))
    cal = SHARED / "images" / "calibration" / "ref"
    photos = sorted(cal.glob("*.bmp")) if cal.is_dir() else []
    if len(photos) >= count:
        refs = [Image.open(p).convert("RGB") for p in photos[:count]]
        source = f"TID2013 calibration references ({count}) resized to {size}"
    else:
        sys.path.insert(0, str(REPO / "src"))
        from lmmiqa.data.synth import builtin_images

        imgs = [img.convert("RGB") for _n, img in builtin_images()]
        refs = [imgs[i % len(imgs)].transpose(Image.FLIP_LEFT_RIGHT) if i >= len(imgs) else imgs[i]
                for i in range(count)]
        source = f"lmmiqa built-in photos ({len(imgs)}, mirrored to reach {count}) resized to {size}"
    rng = np.random.default_rng(0)
    ref, dist = [], []
    for img in refs:
        r = np.asarray(img.resize((w, h), Image.BICUBIC))
        noisy = Image.fromarray(np.clip(r + rng.normal(0, 8, r.shape), 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        noisy.save(buf, format="JPEG", quality=60)
        ref.append(np.ascontiguousarray(r))
        dist.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return dist, ref, source + " (distorted: noise σ=8 + JPEG q60)"


# ----------------------------------------------------------------------------------------------------- workers
def _pyiqa_metric(name: str, params: str, tmp: str) -> Any:
    import pyiqa
    import scipy.io
    import torch

    extra: dict[str, Any] = {}
    if name == "niqe":
        niqe = np.load(Path(params) / "niqe_pris_params.npz")
        scipy.io.savemat(Path(tmp) / "niqe.mat", {"mu_prisparam": niqe["mu_pris_param"],
                                                   "cov_prisparam": niqe["cov_pris_param"]})
        extra["pretrained_model_path"] = str(Path(tmp) / "niqe.mat")
    elif name == "brisque":
        svm = np.load(Path(params) / "brisque_svm.npz")
        torch.save((torch.from_numpy(svm["sv_coef"].astype(np.float64)),
                    torch.from_numpy(svm["sv"].astype(np.float64))), Path(tmp) / "brisque.pth")
        extra["pretrained_model_path"] = str(Path(tmp) / "brisque.pth")
    return pyiqa.create_metric(PYIQA[name], device="cpu", **extra)


def worker(lib: str, npz: str, params: str) -> None:
    """Long-lived worker: reads JSON requests ``{"tool", "size", "i"}`` on stdin, answers
    ``{"cpu": seconds, "value": v}`` (one line each); ``{"tool", "size", "warm": true}`` warms up."""
    data = np.load(npz)
    tmp = tempfile.mkdtemp()
    tools: dict[str, Any] = {}
    inputs: dict[tuple[str, int], tuple[Any, Any]] = {}
    if lib == "pyiqa":
        import torch

        torch.set_num_threads(1)
        torch.set_grad_enabled(False)
    else:
        sys.path.insert(0, str(REPO / "src"))
        from lmmiqa.tools import get_tool
    out = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        name, size = req["tool"], req["size"]
        if name not in tools:
            tools[name] = _pyiqa_metric(name, params, tmp) if lib == "pyiqa" else get_tool(name)
        tool = tools[name]
        i = int(req.get("i", 0))
        if (size, i) not in inputs:
            d, r = data[f"{size}_d{i}"], data[f"{size}_r{i}"]
            inputs[(size, i)] = (to_pyiqa_tensor(d), to_pyiqa_tensor(r)) if lib == "pyiqa" else (d, r)
        d, r = inputs[(size, i)]
        fr = name in FR_TOOLS
        if lib == "pyiqa":
            c0 = time.thread_time()
            v = tool(d, r) if fr else tool(d)
            cpu = time.thread_time() - c0
        else:
            c0 = time.thread_time()
            v = tool.compute(d, r) if fr else tool.compute(d)
            cpu = time.thread_time() - c0
        out.write(json.dumps({"cpu": cpu, "value": float(v)}) + "\n")
        out.flush()


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, lib: str, python: str, npz: str, params: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen([python, __file__, "--worker", lib, npz, params], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def call(self, tool: str, size: str, i: int) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"tool": tool, "size": size, "i": i}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10, help="photos per size")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of calls per cell (at least one pass)")
    ap.add_argument("--max-passes", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per cell and library before timing")
    ap.add_argument("--sizes", nargs="*", default=list(SIZES))
    ap.add_argument("--tools", nargs="*", default=list(TOOLS))
    ap.add_argument("--pyiqa-python", default=os.environ.get("LMMIQA_PYIQA_PYTHON"),
                    help="python of a venv with pyiqa (default $LMMIQA_PYIQA_PYTHON)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if not args.pyiqa_python or not Path(args.pyiqa_python).is_file():
        print("pyiqa not measured: pass --pyiqa-python /path/to/venv/bin/python (or set LMMIQA_PYIQA_PYTHON) "
              "of a venv with pyiqa installed", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, str(REPO / "src"))
    from lmmiqa.tools.assets import PACKAGE_DIR

    tmp = tempfile.TemporaryDirectory()
    npz = str(Path(tmp.name) / "imgs.npz")
    arrays, sources = {}, {}
    for size in args.sizes:
        dist, ref, sources[size] = load_images(size, args.count)
        for i, (d, r) in enumerate(zip(dist, ref)):
            arrays[f"{size}_d{i}"], arrays[f"{size}_r{i}"] = d, r
    np.savez(npz, **arrays)
    workers = {"lmmiqa": Worker("lmmiqa", sys.executable, npz, str(PACKAGE_DIR)),
               "pyiqa": Worker("pyiqa", args.pyiqa_python, npz, str(PACKAGE_DIR))}
    loads = [os.getloadavg()[0]]
    rows = []
    t_start = time.time()
    print(f"{os.cpu_count()} CPUs; one thread per worker; thread CPU time per call, median [IQR]; "
          f"{args.count} photos, interleaved, order swapped every other image")
    head = f"{'size':<10}{'tool':<9}{'lmmiqa ms':>22}{'pyiqa ms':>24}{'ratio':>8}{'n':>4}{'med |Δ|/|v|':>13}"
    try:
        for size in args.sizes:
            print(f"\n{sources[size]}\n{head}", flush=True)
            for name in args.tools:
                for i in range(min(args.warmup, args.count)):  # parameter files, page faults, malloc, caches
                    for w in workers.values():
                        w.call(name, size, i)
                cpu: dict[str, list[float]] = {lib: [] for lib in LIBS}
                vals: dict[str, dict[int, float]] = {lib: {} for lib in LIBS}
                spent, passes = 0.0, 0
                while passes < 1 or (spent < args.budget and passes < args.max_passes):
                    for i, lib in schedule(args.count, 1, start=passes * args.count):
                        res = workers[lib].call(name, size, i)
                        cpu[lib].append(res["cpu"])
                        vals[lib][i] = res["value"]
                        spent += res["cpu"]
                    passes += 1
                loads.append(os.getloadavg()[0])
                q_l, q_p = _quartiles(cpu["lmmiqa"]), _quartiles(cpu["pyiqa"])
                rel = statistics.median(abs(vals["lmmiqa"][i] - vals["pyiqa"][i]) / max(abs(vals["pyiqa"][i]), 1e-12)
                                        for i in range(args.count))
                ratio = q_p[1] / q_l[1]
                rows.append({"size": size, "tool": name, "lmmiqa_ms": [1000 * v for v in q_l],
                             "pyiqa_ms": [1000 * v for v in q_p], "ratio": ratio, "calls": len(cpu["lmmiqa"]),
                             "median_rel_diff": rel})
                print(f"{size:<10}{name:<9}{1000 * q_l[1]:>8.2f} [{1000 * q_l[0]:.2f}-{1000 * q_l[2]:.2f}]"
                      f"{1000 * q_p[1]:>10.2f} [{1000 * q_p[0]:.2f}-{1000 * q_p[2]:.2f}]{ratio:>7.2f}×"
                      f"{len(cpu['lmmiqa']):>4}{rel:>13.1e}", flush=True)
    finally:
        for w in workers.values():
            w.close()
        tmp.cleanup()
    print(f"\nload average (1 min) during the run: {min(loads):.2f}-{max(loads):.2f}; "
          f"{time.time() - t_start:.0f} s; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("\n| tool | " + " | ".join(args.sizes) + " |\n|---|" + "---|" * len(args.sizes))
    for name in args.tools:
        cells = [next((f"{r['ratio']:.2f}×" for r in rows if r["tool"] == name and r["size"] == s), "—")
                 for s in args.sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load": [min(loads), max(loads)]}, indent=2))


if __name__ == "__main__":
    main()
