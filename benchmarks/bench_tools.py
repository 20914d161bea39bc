"""Classical tools benchmark (not a test): time per image for each tool at three sizes, against the previous
lmmiqa implementation (same process, interleaved) and, when available, pyiqa (single thread).

* Images: the TID2013 calibration pairs in ``../shared/data/images/calibration`` resized (PIL bicubic) to
  512×384, 1024×768 and 2048×1536; without ``../shared``, built-in sample photos (plus noise as distortion).
  Images are decoded once beforehand (uint8 arrays), so the times are the tools' own.
* Baseline: the tools of git ref ``--baseline`` (default ``3158065``, the code before the speed-up of issue 13)
  are extracted with ``git archive`` into a temporary folder, renamed to the package ``lmmiqa_legacy`` and
  timed in the same process, alternating with the current code image by image, so that the load of a shared
  machine hits both alike. The table also shows the largest relative difference between the two values.
* pyiqa: ``--pyiqa-python /path/to/venv/bin/python`` runs the same images through pyiqa (``torch`` set to one
  thread, CPU) in that interpreter (pyiqa needs torchvision, which the project venv must not have) and
  prints the side-by-side ratio; without it the pyiqa column says "not measured".
* Everything runs with one BLAS/OpenMP thread (``OMP_NUM_THREADS=1`` etc. are set before numpy loads).
* Times are the calling thread's CPU time (``time.thread_time``; single-threaded code), medians over repeats:
  on a shared machine that is far steadier than wall time, which is shown as a ratio too ("wall ×").

Compare columns of one table, not tables of different runs.

    python benchmarks/bench_tools.py [--repeats 3] [--sizes 512x384 1024x768 2048x1536] [--tools niqe ...]
        [--baseline REF | --no-baseline] [--pyiqa-python PATH] [--json OUT.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TOOLS = ("niqe", "brisque", "piqe", "psnr", "ssim", "ms_ssim", "gmsd")
SIZES = ("512x384", "1024x768", "2048x1536")
DEFAULT_BASELINE = "3158065"
#: pyiqa metric names and options matching lmmiqa's conventions as closely as pyiqa allows
PYIQA = {"niqe": "niqe", "brisque": "brisque", "piqe": "piqe", "psnr": "psnr", "ssim": "ssim",
         "ms_ssim": "ms_ssim", "gmsd": "gmsd"}
FR_TOOLS = {"psnr", "ssim", "ms_ssim", "gmsd"}


def _images(size: str, count: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    from PIL import Image

    w, h = (int(v) for v in size.split("x"))
    cal = SHARED / "images" / "calibration"
    names = ("I04", "I19", "I08", "I03", "I06")[:count]
    if all((cal / d / f"{n}.bmp").is_file() for d in ("dist", "ref") for n in names):
        def load(p: Path) -> np.ndarray:
            return np.asarray(Image.open(p).convert("RGB").resize((w, h), Image.BICUBIC))

        return ([load(cal / "dist" / f"{n}.bmp") for n in names], [load(cal / "ref" / f"{n}.bmp") for n in names],
                f"TID2013 calibration pairs {', '.join(names)} resized to {size}")
    from lmmiqa.data.synth import builtin_images

    rng = np.random.default_rng(0)
    ref = [np.asarray(img.convert("RGB").resize((w, h), Image.BICUBIC)) for _n, img in builtin_images()[:count]]
    dist = [np.clip(r + rng.normal(0, 8, r.shape), 0, 255).astype(np.uint8) for r in ref]
    return dist, ref, f"built-in photos resized to {size} (+ noise as distortion)"


def _legacy_package(ref: str, dest: Path) -> None:
    """Extract ``src/lmmiqa`` of git ``ref`` into ``dest/lmmiqa_legacy`` with its imports renamed."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src/lmmiqa"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    src = dest / "src" / "lmmiqa"
    pattern = re.compile(r"\blmmiqa(?=[.:\s])")
    for py in src.rglob("*.py"):
        text = py.read_text(encoding="utf-8")
        py.write_text(pattern.sub("lmmiqa_legacy", text), encoding="utf-8")
    src.rename(dest / "lmmiqa_legacy")


def _timed(fn, *args) -> tuple[float, float, float]:
    """``(thread CPU seconds, wall seconds, value)``. The CPU time of the calling thread is what the tool
    itself costs (everything runs single-threaded); wall time adds the waits of a loaded machine."""
    c0, t0 = time.thread_time(), time.perf_counter()
    value = fn(*args)
    return time.thread_time() - c0, time.perf_counter() - t0, float(value)


def _run_pyiqa(python: str, sizes: list[str], tools: list[str], repeats: int, count: int) -> dict:
    """Time pyiqa in another interpreter on the same images (saved to a temporary .npz)."""
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {}
        for size in sizes:
            dist, ref, _ = _images(size, count)
            for i, (d, r) in enumerate(zip(dist, ref)):
                arrays[f"{size}_d{i}"], arrays[f"{size}_r{i}"] = d, r
        np.savez(Path(tmp) / "imgs.npz", **arrays)
        from lmmiqa.tools.assets import PACKAGE_DIR

        out = subprocess.run(
            [python, __file__, "--pyiqa-worker", str(Path(tmp) / "imgs.npz"), "--repeats", str(repeats),
             "--sizes", *sizes, "--tools", *tools, "--count", str(count), "--pyiqa-params", str(PACKAGE_DIR)],
            capture_output=True, text=True, check=False,
        )
        if out.returncode != 0:
            print(f"pyiqa worker failed: {out.stderr.strip()[-800:]}", file=sys.stderr)
            return {}
        return json.loads(out.stdout.strip().splitlines()[-1])


def _pyiqa_worker(path: str, sizes: list[str], tools: list[str], repeats: int, count: int, params: str) -> None:
    """Runs in the pyiqa venv. pyiqa downloads NIQE/BRISQUE parameters at first use; offline they are written
    from lmmiqa's shipped files instead (NIQE: the same official pristine model; BRISQUE: the official SVR's
    774 support vectors in pyiqa's format — the same amount of work, values not comparable)."""
    import pyiqa
    import scipy.io
    import torch

    torch.set_num_threads(1)
    data = np.load(path)
    tmp = tempfile.mkdtemp()
    niqe = np.load(Path(params) / "niqe_pris_params.npz")
    scipy.io.savemat(Path(tmp) / "niqe.mat", {"mu_prisparam": niqe["mu_pris_param"],
                                               "cov_prisparam": niqe["cov_pris_param"]})
    svm = np.load(Path(params) / "brisque_svm.npz")
    torch.save((torch.from_numpy(svm["sv_coef"].astype(np.float64)), torch.from_numpy(svm["sv"].astype(np.float64))),
               Path(tmp) / "brisque.pth")
    model_path = {"niqe": str(Path(tmp) / "niqe.mat"), "brisque": str(Path(tmp) / "brisque.pth")}
    result: dict[str, dict[str, dict[str, float]]] = {}
    with torch.no_grad():
        for name in tools:
            extra = {"pretrained_model_path": model_path[name]} if name in model_path else {}
            metric = pyiqa.create_metric(PYIQA[name], device="cpu", **extra)
            for size in sizes:
                times, values = [], []
                tensors = [(torch.from_numpy(data[f"{size}_d{i}"]).permute(2, 0, 1)[None].float() / 255.0,
                            torch.from_numpy(data[f"{size}_r{i}"]).permute(2, 0, 1)[None].float() / 255.0)
                           for i in range(count)]
                metric(*tensors[0]) if name in FR_TOOLS else metric(tensors[0][0])  # warm-up
                for _ in range(repeats):
                    for d, r in tensors:
                        t0 = time.thread_time()
                        v = metric(d, r) if name in FR_TOOLS else metric(d)
                        times.append(time.thread_time() - t0)
                        values.append(float(v))
                result.setdefault(name, {})[size] = {"ms": 1000 * statistics.median(times), "value": values[0]}
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over the images (median reported)")
    ap.add_argument("--count", type=int, default=2, help="image pairs per size (1-5)")
    ap.add_argument("--sizes", nargs="*", default=list(SIZES))
    ap.add_argument("--tools", nargs="*", default=list(TOOLS))
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git ref of the implementation to compare with")
    ap.add_argument("--no-baseline", action="store_true", help="time the current code only")
    ap.add_argument("--pyiqa-python", default=None, help="python of a venv with pyiqa (side-by-side ratio)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--pyiqa-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pyiqa-params", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pyiqa_worker:
        _pyiqa_worker(args.pyiqa_worker, args.sizes, args.tools, args.repeats, args.count, args.pyiqa_params)
        return

    sys.path.insert(0, str(REPO / "src"))
    from lmmiqa.tools import get_tool
    from lmmiqa.tools.assets import PACKAGE_DIR

    os.environ.setdefault("LMMIQA_ASSETS", str(PACKAGE_DIR))  # the old code has no shipped parameter files
    legacy_get = None
    tmp = None
    if not args.no_baseline:
        tmp = tempfile.TemporaryDirectory()
        _legacy_package(args.baseline, Path(tmp.name))
        sys.path.insert(0, tmp.name)
        from lmmiqa_legacy.tools import get_tool as legacy_get  # type: ignore[no-redef]

    pyiqa_res = _run_pyiqa(args.pyiqa_python, args.sizes, args.tools, args.repeats, args.count) \
        if args.pyiqa_python else {}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at start; one thread; thread CPU time, median of "
          f"{args.repeats} × {args.count} images; baseline: {'none' if args.no_baseline else args.baseline}")
    head = (f"{'size':<10}{'tool':<9}{'cpu ms':>9}{'old':>9}{'speed-up':>9}{'wall ×':>8}{'max |Δ|/|v|':>13}"
            f"{'pyiqa ms':>10}{'vs pyiqa':>10}")
    rows = []
    for size in args.sizes:
        dist, ref, source = _images(size, args.count)
        print(f"\n{source}\n{head}")
        for name in args.tools:
            new = get_tool(name)
            # the old NIQE default was Y of YCbCr: compare like with like (rgb2gray, the new default)
            old = legacy_get(name, **({"channel": "gray"} if name == "niqe" else {})) if legacy_get else None
            is_fr = new.kind == "fr"

            def call(tool, i, is_fr=is_fr, dist=dist, ref=ref):
                return (lambda: tool.compute(dist[i], ref[i])) if is_fr else (lambda: tool.compute(dist[i]))

            call(new, 0)()  # warm-up: parameter files, tables, caches
            if old is not None:
                call(old, 0)()
            c_new, w_new, c_old, w_old, rel = [], [], [], [], 0.0
            for _ in range(args.repeats):
                for i in range(len(dist)):
                    c, w, v_new = _timed(call(new, i))
                    c_new.append(c)
                    w_new.append(w)
                    if old is not None:
                        c, w, v_old = _timed(call(old, i))
                        c_old.append(c)
                        w_old.append(w)
                        if v_new != v_old:
                            rel = max(rel, abs(v_new - v_old) / max(abs(v_old), 1e-300))
            ms = 1000 * statistics.median(c_new)
            old_ms = 1000 * statistics.median(c_old) if c_old else float("nan")
            wall = statistics.median(w_old) / statistics.median(w_new) if w_old else float("nan")
            p = pyiqa_res.get(name, {}).get(size)
            row = {"size": size, "tool": name, "cpu_ms": ms, "old_cpu_ms": old_ms, "speedup": old_ms / ms,
                   "wall_speedup": wall, "max_rel_diff": rel if old is not None else None,
                   "pyiqa_cpu_ms": p["ms"] if p else None, "vs_pyiqa": p["ms"] / ms if p else None}
            rows.append(row)
            pyiqa_txt = f"{p['ms']:>10.1f}{p['ms'] / ms:>9.2f}×" if p else f"{'-':>10}{'unmeasured':>11}"
            print(f"{size:<10}{name:<9}{ms:>9.1f}{old_ms:>9.1f}{old_ms / ms:>8.2f}×{wall:>7.2f}×{rel:>13.1e}"
                  f"{pyiqa_txt}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "baseline": args.baseline, "load": load}, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
