"""Automatic choice of a LEAF student's crop side and inference crops from the images' size.

LEAF (Wang et al. 2025) distills an MLLM teacher into a small student; lmmiqa's students see native-resolution
crops. Scale-sensitive teachers (NIQE fits one model to the 96x96-block statistics of the whole image) are not
followed by crops much smaller than the image, so the crop grows with the image: about half the short side,
bounded and rounded to the student's stride, and the inference crops tile the image. Pure functions, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: crop side as a share of the images' (median) short side
CROP_FRACTION = 0.5
#: largest automatic crop side (compute grows with its square). bench_leaf, NIQE teacher at 512², 12 epochs: 192²
#: crops 0.56-0.59 on held-out photos, 256² crops 0.49-0.53 (fewer distinct views per image) at ~1.8x the cost
MAX_AUTO_CROP = 192
#: the crop side is rounded down to a multiple of this (the small-cnn's total stride, 16)
CROP_STRIDE = 16
#: automatic inference crops: at least MIN_AUTO_CROPS (the grid's 2x2), at most MAX_AUTO_CROPS (3x3)
MIN_AUTO_CROPS = 4
MAX_AUTO_CROPS = 9
#: images whose header is read to estimate the typical size
SIZE_SAMPLE = 64


def auto_crop_size(short_side: int, default_crop: int, *, fraction: float = CROP_FRACTION,
                   max_crop: int = MAX_AUTO_CROP, stride: int = CROP_STRIDE) -> int:
    """Crop side for images of ``short_side``: ``fraction`` of it rounded down to ``stride``, at least the
    student's ``default_crop`` and at most ``max(max_crop, default_crop)``."""
    if short_side < 1 or default_crop < 1:
        raise ValueError(f"short_side and default_crop must be >= 1, got {short_side}, {default_crop}")
    side = int(short_side * fraction) // stride * stride
    return int(min(max(max_crop, default_crop), max(default_crop, side)))


def auto_crops(height: int, width: int, crop: int, *, layout: str = "grid") -> int:
    """Inference crops that tile an ``height`` x ``width`` image with ``crop``-side crops (grid cells
    ``ceil(H/crop) * ceil(W/crop)``), within [MIN_AUTO_CROPS, MAX_AUTO_CROPS]; at most 5 for ``corners``."""
    cells = math.ceil(max(height, crop) / crop) * math.ceil(max(width, crop) / crop)
    n = min(MAX_AUTO_CROPS, max(MIN_AUTO_CROPS, cells))
    return min(n, 5) if layout == "corners" else n


def typical_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Median (height, width) of ``(width, height)`` PIL sizes, the larger side taken as the width."""
    if not sizes:
        raise ValueError("no image sizes to choose views from")
    shorts = sorted(min(w, h) for w, h in sizes)
    longs = sorted(max(w, h) for w, h in sizes)
    mid = len(sizes) // 2
    return int(shorts[mid]), int(longs[mid])


def choose_views(sizes: Sequence[tuple[int, int]], default_crop: int, *, image_size: int | None = None,
                 crops: int | None = None, layout: str = "grid") -> dict[str, int | bool]:
    """The crop side and inference crops for images of ``sizes`` (PIL ``(width, height)``): explicit
    ``image_size``/``crops`` win, ``None`` picks them with :func:`auto_crop_size` / :func:`auto_crops`."""
    short, long = typical_size(sizes)
    size = int(image_size) if image_size is not None else auto_crop_size(short, default_crop)
    n = int(crops) if crops is not None else auto_crops(short, long, size, layout=layout)
    return {"image_size": size, "crops": n, "auto_image_size": image_size is None, "auto_crops": crops is None,
            "median_short_side": short, "median_long_side": long}
