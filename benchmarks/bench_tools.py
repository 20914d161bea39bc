"""Classical tools benchmark (not a test): time per 512×384 image for each tool, one thread and a thread pool.

Images: the five TID2013 calibration pairs in ``../shared/data/images/calibration`` (512×384) when present, else
built-in sample photos cropped to 512×384 with a noisy copy as the distorted image. NIQE/BRISQUE need their
parameter files (``--assets DIR``, ``$LMMIQA_ASSETS`` or ``../shared/data/params``); without them they are
reported as skipped. The images are decoded once beforehand (arrays), so the times are the tools' own.

Timings are medians over repeats in one run on a shared machine: compare tools with each other, not across runs.

    python benchmarks/bench_tools.py [--repeats 5] [--threads 4] [--tools niqe brisque ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _images() -> tuple[list[np.ndarray], list[np.ndarray], str]:
    from PIL import Image

    cal = SHARED / "images" / "calibration"
    names = ("I03", "I04", "I06", "I08", "I19")
    if all((cal / d / f"{n}.bmp").is_file() for d in ("dist", "ref") for n in names):
        dist = [np.asarray(Image.open(cal / "dist" / f"{n}.bmp").convert("RGB")) for n in names]
        ref = [np.asarray(Image.open(cal / "ref" / f"{n}.bmp").convert("RGB")) for n in names]
        return dist, ref, "TID2013 calibration pairs (512×384)"
    from lmmiqa.data.synth import builtin_images

    rng = np.random.default_rng(0)
    ref = []
    for _name, img in builtin_images()[:5]:
        w, h = img.size
        scale = max(512 / w, 384 / h)
        img = img.resize((max(512, round(w * scale)), max(384, round(h * scale))))
        ref.append(np.asarray(img)[:384, :512])
    dist = [np.clip(r + rng.normal(0, 8, r.shape), 0, 255).astype(np.uint8) for r in ref]
    return dist, ref, "built-in photos cropped to 512×384 (+ noise as distortion)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over the images (median reported)")
    ap.add_argument("--threads", type=int, default=4, help="thread-pool size for the throughput column")
    ap.add_argument("--assets", default=None, help="folder with the NIQE/BRISQUE parameter files")
    ap.add_argument("--tools", nargs="*", default=None, help="tools to time (default: every registered tool)")
    args = ap.parse_args()

    if args.assets:
        os.environ["LMMIQA_ASSETS"] = args.assets
    elif "LMMIQA_ASSETS" not in os.environ and (SHARED / "params").is_dir():
        os.environ["LMMIQA_ASSETS"] = str(SHARED / "params")

    from lmmiqa.errors import LmmiqaError
    from lmmiqa.tools import FR, get_tool, list_tools

    dist, ref, source = _images()
    names = args.tools or list_tools(include_pyiqa=False)
    print(f"images: {source}; {args.repeats} repeats; median per image; {os.cpu_count()} CPUs")
    print(f"{'tool':<14}{'kind':<6}{'ms/image':>10}{'images/s':>10}{f'img/s x{args.threads}':>12}")
    for name in names:
        tool = get_tool(name)
        is_fr = tool.kind == FR

        def one(i: int, tool=tool, is_fr=is_fr) -> float:
            return tool.compute(dist[i], ref[i]) if is_fr else tool.compute(dist[i])

        try:
            one(0)  # warm-up (parameter files, caches)
        except (LmmiqaError, ValueError) as err:  # e.g. missing parameter files: report and go on
            print(f"{name:<14}{tool.kind:<6}  skipped: {err}"[:160])
            continue
        per_image = []
        for _ in range(args.repeats):
            for i in range(len(dist)):
                t0 = time.perf_counter()
                one(i)
                per_image.append(time.perf_counter() - t0)
        med = statistics.median(per_image)
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            t0 = time.perf_counter()
            list(pool.map(one, [i for _ in range(args.repeats) for i in range(len(dist))]))
            pooled = args.repeats * len(dist) / (time.perf_counter() - t0)
        print(f"{name:<14}{tool.kind:<6}{med * 1000:>10.1f}{1 / med:>10.1f}{pooled:>12.1f}")


if __name__ == "__main__":
    main()
