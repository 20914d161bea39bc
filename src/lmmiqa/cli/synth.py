"""``lmmiqa synth``: write a synthetic distortion ladder (KADID-style, pseudo-MOS) for tests and benchmarks."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    from lmmiqa.data.synth import DISTORTIONS

    p = sub.add_parser(
        "synth",
        help="generate a synthetic distortion ladder with pseudo-MOS labels",
        description="Distort pristine images (built-in samples or a folder) with KADID-style distortions at "
        "monotone severities and write labels.csv (collection format: dis_img_path, dis_type, ref_img_path, "
        "score, severity, synthetic). The score is a SYNTHETIC pseudo-MOS, 5 - 4*severity/S, not human opinion. "
        "Load the result with --dataset synthetic --root OUT.",
    )
    p.add_argument("--images", default="builtin", help="'builtin' (sample photos shipped with scikit-image, "
                   "scikit-learn, matplotlib) or a folder of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--severities", type=int, default=5, help="severity levels (default 5)")
    p.add_argument("--types", nargs="+", default=None, metavar="TYPE",
                   help=f"distortion types (default all): {', '.join(DISTORTIONS)}")
    p.add_argument("--size", type=int, default=256, help="side of the square output images in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random distortions (default 0)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="use only the first N source images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmmiqa.data.synth import make_ladder

    ds = make_ladder(
        args.out,
        images=args.images,
        severities=args.severities,
        types=args.types,
        size=args.size,
        seed=args.seed,
        max_images=args.max_images,
    )
    refs = len({it.ref_id for it in ds})
    types = len({it.dis_type for it in ds})
    print(f"{len(ds)} distorted images ({refs} references x {types} types x {args.severities} severities) "
          f"written to {args.out}; labels: {ds.labels} (SYNTHETIC pseudo-MOS)", file=sys.stdout)
    return 0
