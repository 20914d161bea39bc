"""A weight-free segmenter: Felzenszwalb–Huttenlocher graph segmentation merged to a coarse granularity.

This is a **fallback**, not the setting of LLM-IQA (Dog-IQA, Liu et al. 2024), which uses SAM 2 (Ravi et al.
2024; see :mod:`lmmiqa.segment.sam2`). It needs no model weights, so the method runs fully offline (tests, demos,
machines without a SAM 2 checkpoint); its regions follow colour and texture rather than objects, so expect
different (usually lower) correlations than the paper's.

Steps: downscale the image (longer side ``work_max_side``), run ``skimage.segmentation.felzenszwalb``, then
repeatedly merge the smallest segment into its most similar adjacent segment (mean CIE-Lab colour) until at
most ``max_regions`` remain and none is smaller than ``min_region_fraction`` of the image; finally upsample
the labels (nearest) to the original size. The masks are disjoint and cover the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lmmiqa.errors import ConfigError, require
from lmmiqa.segment.base import Segmenter, SegmenterConfig, as_rgb_image


@dataclass
class FelzenszwalbConfig(SegmenterConfig):
    """Options of the Felzenszwalb fallback segmenter.

    Attributes:
        max_regions: merge until at most this many regions remain (LLM-IQA's SAM 2 setting gives ~7).
        min_region_fraction: also merge any region smaller than this fraction of the image.
        scale: Felzenszwalb's ``scale`` (higher = larger initial segments).
        sigma: Gaussian smoothing before segmentation.
        min_size: Felzenszwalb's minimum initial component size (pixels at the working resolution).
        work_max_side: longer side of the downscaled image the segmentation runs on.
    """

    max_regions: int = 8
    min_region_fraction: float = 0.01
    scale: float = 100.0
    sigma: float = 0.8
    min_size: int = 50
    work_max_side: int = 256

    def __post_init__(self) -> None:
        if int(self.max_regions) < 1:
            raise ConfigError(f"max_regions must be >= 1, got {self.max_regions!r}")
        self.max_regions = int(self.max_regions)
        if not 0.0 <= float(self.min_region_fraction) < 1.0:
            raise ConfigError(f"min_region_fraction must be in [0, 1), got {self.min_region_fraction!r}")
        if float(self.scale) <= 0 or float(self.sigma) < 0:
            raise ConfigError(
                f"scale must be > 0 and sigma >= 0, got scale={self.scale!r} sigma={self.sigma!r}"
            )
        if int(self.min_size) < 1 or int(self.work_max_side) < 8:
            raise ConfigError("min_size must be >= 1 and work_max_side >= 8")
        self.min_size = int(self.min_size)
        self.work_max_side = int(self.work_max_side)


def merge_segments(
    labels: np.ndarray, features: np.ndarray, max_regions: int, min_size: int = 0
) -> np.ndarray:
    """Merge the smallest segment into its most similar neighbour until the constraints hold.

    Merging continues while more than ``max_regions`` segments remain or the smallest is below ``min_size``
    pixels (and it has a neighbour). The neighbour chosen is the one with the closest mean feature (Euclidean;
    ties: the larger neighbour, then the lower label).

    Args:
        labels: ``int [H, W]`` segment labels (any non-negative integers).
        features: ``float [H, W, C]`` per-pixel features (e.g. Lab colour).
        max_regions: upper bound on the number of segments.
        min_size: segments smaller than this (pixels) are merged even when few remain.

    Returns:
        ``int64 [H, W]`` labels ``0..K-1``, numbered by decreasing segment size.
    """
    if labels.shape != features.shape[:2]:
        raise ConfigError(f"labels {labels.shape} and features {features.shape} disagree")
    _, inverse = np.unique(labels.ravel(), return_inverse=True)
    lab = inverse.reshape(labels.shape).astype(np.int64)
    n = int(lab.max()) + 1
    feats = features.reshape(-1, features.shape[-1]).astype(np.float64)
    size = np.bincount(lab.ravel(), minlength=n).astype(np.float64)
    sums = np.stack(
        [np.bincount(lab.ravel(), weights=feats[:, c], minlength=n) for c in range(feats.shape[1])], 1
    )
    # adjacency from 4-neighbour pairs
    pairs = np.concatenate(
        [
            np.stack([lab[:, :-1].ravel(), lab[:, 1:].ravel()], 1),
            np.stack([lab[:-1, :].ravel(), lab[1:, :].ravel()], 1),
        ]
    )
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in np.unique(np.sort(pairs, axis=1), axis=0):
        neighbours[int(a)].add(int(b))
        neighbours[int(b)].add(int(a))
    parent = np.arange(n)
    alive = set(range(n))
    while len(alive) > 1:
        smallest = min(alive, key=lambda s: (size[s], s))
        if len(alive) <= max_regions and size[smallest] >= min_size:
            break
        if not neighbours[smallest]:  # isolated (cannot happen in a connected image grid); stop merging it
            break
        mean_s = sums[smallest] / size[smallest]
        target = min(
            neighbours[smallest],
            key=lambda t: (float(np.sum((sums[t] / size[t] - mean_s) ** 2)), -size[t], t),
        )
        # merge smallest into target
        sums[target] += sums[smallest]
        size[target] += size[smallest]
        parent[smallest] = target
        for nb in neighbours[smallest]:
            neighbours[nb].discard(smallest)
            if nb != target:
                neighbours[nb].add(target)
                neighbours[target].add(nb)
        neighbours[smallest] = set()
        alive.discard(smallest)
    # resolve merge chains
    for i in range(n):
        root = i
        while parent[root] != root:
            root = parent[root]
        parent[i] = root
    merged = parent[lab]
    roots, counts = np.unique(merged, return_counts=True)
    order = roots[np.argsort(-counts, kind="stable")]
    remap = np.zeros(n, dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[merged]


class FelzenszwalbSegmenter(Segmenter):
    """Weight-free fallback: Felzenszwalb graph segmentation merged to a few coarse regions (not the paper's)."""

    name: ClassVar[str] = "felzenszwalb"
    config_cls: ClassVar[type] = FelzenszwalbConfig

    def segment(self, image: Any) -> np.ndarray:
        """Disjoint masks ``bool [K, H, W]`` that cover the image, largest first (``K <= max_regions``)."""
        require("skimage", "seg", "the felzenszwalb segmenter")
        from PIL import Image
        from skimage.color import rgb2lab
        from skimage.segmentation import felzenszwalb

        cfg: FelzenszwalbConfig = self.config
        img = as_rgb_image(image)
        w, h = img.size
        factor = min(1.0, cfg.work_max_side / max(w, h))
        sw, sh = max(1, round(w * factor)), max(1, round(h * factor))
        small = img.resize((sw, sh), Image.BILINEAR) if (sw, sh) != (w, h) else img
        arr = np.asarray(small, dtype=np.float64) / 255.0
        labels = felzenszwalb(arr, scale=cfg.scale, sigma=cfg.sigma, min_size=cfg.min_size)
        lab = rgb2lab(arr)
        min_pixels = cfg.min_region_fraction * sw * sh
        merged = merge_segments(labels, lab, cfg.max_regions, min_size=int(np.ceil(min_pixels)))
        rows = np.minimum(((np.arange(h) + 0.5) * sh / h).astype(np.int64), sh - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * sw / w).astype(np.int64), sw - 1)
        full = merged[rows][:, cols]
        k = int(full.max()) + 1
        masks = full[None, :, :] == np.arange(k)[:, None, None]
        return masks[masks.any(axis=(1, 2))]
