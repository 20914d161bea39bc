"""Algorithm 1 of LLM-IQA (Dog-IQA, Liu et al. 2024) and the mix-grained aggregation, as pure functions.

Pipeline (METHODS.md §1):

1. :func:`select_regions` — keep the masks whose area is at least ``t`` (a fraction of the image area), then add
   the *complement* (pixels covered by no kept mask) when its area is at least ``t`` too. The complement is
   essential: without it the paper's SPAQ SRCC fell from 0.886 to 0.675. When no mask is kept, the complement
   is the whole image, so an image always yields at least one region.
2. :func:`crop_regions` — crop each region's **bounding box** from the original image (original pixels, no
   masking: masked-out padding confuses the vision encoder).
3. :func:`area_weighted_mean` — the local score, weighting each crop's score by its **mask** area.
4. :func:`mix_scores` — ``s = (s_global + λ·s_local) / (1 + λ)``, so the final score stays on the level scale.

Boxes are ``[x0, y0, x1, y1]`` in pixels with exclusive ends (``image.crop(bbox)`` gives the region's box);
areas are pixel counts of the mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError
from lmmiqa.types import Region

#: default area threshold t of Algorithm 1, as a fraction of the image area (the paper does not publish t)
DEFAULT_MIN_AREA = 0.01


def as_mask_stack(masks: Any, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Normalise masks to a ``bool`` array ``[N, H, W]``.

    Args:
        masks: an ``[N, H, W]`` array, a single ``[H, W]`` mask, or a sequence of ``[H, W]`` arrays. Non-bool
            values are binarised with ``!= 0``.
        shape: ``(H, W)`` expected; required when ``masks`` is an empty sequence.

    Raises:
        ConfigError: masks of different shapes, a wrong number of dimensions, or a shape mismatch.
    """
    if isinstance(masks, np.ndarray):
        arr = masks
    else:
        items = list(masks)
        if not items:
            if shape is None:
                raise ConfigError("an empty list of masks needs the image shape (H, W)")
            return np.zeros((0, int(shape[0]), int(shape[1])), dtype=bool)
        shapes = {np.shape(m) for m in items}
        if len(shapes) != 1:
            raise ConfigError(f"all masks must have the same shape, got {sorted(shapes)}")
        arr = np.stack([np.asarray(m) for m in items])
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ConfigError(f"masks must be [N, H, W] or a list of [H, W] arrays, got shape {arr.shape}")
    if shape is not None and tuple(arr.shape[1:]) != (int(shape[0]), int(shape[1])):
        raise ConfigError(f"masks have shape {tuple(arr.shape[1:])} but the image is {tuple(shape)} (H, W)")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ConfigError(f"masks have no pixels (shape {arr.shape})")
    return arr if arr.dtype == bool else arr != 0


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` of the true pixels of one ``[H, W]`` mask, exclusive ends.

    Returns ``None`` for an empty mask.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Bounding boxes ``[N, 4]`` (int64, ``x0, y0, x1, y1``, exclusive ends) of ``[N, H, W]`` masks.

    Empty masks get ``[0, 0, 0, 0]``.
    """
    masks = np.asarray(masks, dtype=bool)
    n, h, w = masks.shape
    out = np.zeros((n, 4), dtype=np.int64)
    if n == 0:
        return out
    rows = masks.any(axis=2)  # [N, H]
    cols = masks.any(axis=1)  # [N, W]
    nonempty = rows.any(axis=1)
    if not nonempty.any():
        return out
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    out[:] = np.stack([x0, y0, x1, y1], axis=1)
    out[~nonempty] = 0
    return out


def check_min_area(min_area: float) -> float:
    """Validate Algorithm 1's threshold ``t`` (a fraction of the image area in ``[0, 1]``)."""
    try:
        t = float(min_area)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"min_area must be a number in [0, 1], got {min_area!r}") from err
    if not (0.0 <= t <= 1.0) or math.isnan(t):
        raise ConfigError(f"min_area is a fraction of the image area and must be in [0, 1], got {min_area!r}")
    return t


def select_regions(
    masks: Any,
    min_area: float = DEFAULT_MIN_AREA,
    *,
    shape: tuple[int, int] | None = None,
) -> tuple[list[Region], np.ndarray]:
    """Algorithm 1: area-filter the masks and add the complement of their union.

    A mask is kept when its pixel count is at least ``t·H·W`` (and at least 1: empty masks never count).
    The complement (pixels covered by no kept mask) is added, last, under the same rule. Kept masks stay in
    their input order and may overlap; overlapping pixels count towards every mask that covers them.

    Args:
        masks: ``[N, H, W]`` masks (see :func:`as_mask_stack`), e.g. from a segmenter.
        min_area: ``t``, a fraction of the image area in ``[0, 1]`` (default 1 %).
        shape: ``(H, W)`` of the image; required when ``masks`` is an empty list.

    Returns:
        ``(regions, region_masks)``: one :class:`~lmmiqa.types.Region` per kept mask (``kind="mask"``) plus
        possibly one ``kind="complement"``, and their masks as ``bool [K, H, W]`` in the same order.
        With no kept mask, the single region is the whole image (``kind="complement"``).
    """
    stack = as_mask_stack(masks, shape)
    t = check_min_area(min_area)
    _, h, w = stack.shape
    threshold = max(1.0, t * h * w)
    areas = stack.sum(axis=(1, 2))
    keep = np.flatnonzero(areas >= threshold)
    kept = stack[keep]
    regions: list[Region] = []
    for idx, m in zip(keep, kept):
        bbox = mask_bbox(m)
        assert bbox is not None  # area >= 1
        regions.append(Region(bbox=bbox, area=int(areas[idx]), kind="mask"))
    complement = ~kept.any(axis=0) if len(kept) else np.ones((h, w), dtype=bool)
    comp_area = int(complement.sum())
    out_masks = [*kept]
    if comp_area >= threshold:
        bbox = mask_bbox(complement)
        assert bbox is not None
        regions.append(Region(bbox=bbox, area=comp_area, kind="complement"))
        out_masks.append(complement)
    region_masks = np.stack(out_masks) if out_masks else np.zeros((0, h, w), dtype=bool)
    return regions, region_masks


def expand_box(bbox: Sequence[int], min_side: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Grow a box around its centre so that each side is at least ``min_side`` pixels (clamped to the image).

    A box already large enough is returned unchanged. Sides are limited by the image size, so a
    ``min_side`` larger than the image gives the full extent along that axis. Vision processors reject very
    thin crops (e.g. Qwen-VL: aspect ratio > 200, sides below its patch size); growing the box keeps original
    pixels, only adding context.

    Raises:
        ConfigError: ``min_side`` is negative or the box is empty or outside the image.
    """
    if int(min_side) < 0:
        raise ConfigError(f"min_side must be >= 0, got {min_side!r}")
    x0, y0, x1, y1 = (int(v) for v in bbox)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ConfigError(f"box {[x0, y0, x1, y1]} is empty or outside the {width}×{height} image")

    def grow(lo: int, hi: int, limit: int) -> tuple[int, int]:
        side = min(max(int(min_side), hi - lo), limit)
        if hi - lo >= side:
            return lo, hi
        extra = side - (hi - lo)
        lo = lo - extra // 2
        lo = min(max(lo, 0), limit - side)
        return lo, lo + side

    nx0, nx1 = grow(x0, x1, int(width))
    ny0, ny1 = grow(y0, y1, int(height))
    return nx0, ny0, nx1, ny1


def crop_regions(image: Any, regions: Sequence[Region | Any]) -> list[Any]:
    """Crop each region's bounding box from the original image (original pixels, no masking).

    Args:
        image: the RGB ``PIL.Image`` the masks were computed on.
        regions: :class:`~lmmiqa.types.Region` objects (or anything with a ``bbox`` attribute or key).

    Raises:
        ConfigError: a box is empty or falls outside the image.
    """
    w, h = image.size
    crops = []
    for r in regions:
        bbox = r["bbox"] if isinstance(r, dict) else r.bbox
        x0, y0, x1, y1 = (int(v) for v in bbox)
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ConfigError(f"region box {[x0, y0, x1, y1]} is empty or outside the {w}×{h} image")
        crops.append(image.crop((x0, y0, x1, y1)))
    return crops


def area_weights(areas: Sequence[float]) -> np.ndarray:
    """Normalised weights ``a_k / Σ a_j`` (float64); an empty input gives an empty array.

    Raises:
        ConfigError: a negative or non-finite area, or areas that sum to zero.
    """
    a = np.asarray(list(areas), dtype=np.float64)
    if a.size == 0:
        return a
    if a.ndim != 1 or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ConfigError(f"areas must be finite and non-negative, got {a.tolist()}")
    total = a.sum()
    if total <= 0:
        raise ConfigError("areas sum to zero; area weights are undefined")
    return a / total


def area_weighted_mean(scores: Sequence[float], areas: Sequence[float]) -> float | None:
    """Local score of LLM-IQA: ``Σ a_k·s_k / Σ a_k`` with ``a_k`` the mask areas.

    Returns ``None`` when there are no regions (no local score exists; :func:`mix_scores` then returns the global
    score unchanged).

    Raises:
        ConfigError: ``scores`` and ``areas`` differ in length, a score is not finite, or an area is invalid.
    """
    s = np.asarray(list(scores), dtype=np.float64)
    if s.size != len(areas):
        raise ConfigError(f"{s.size} scores but {len(areas)} areas")
    if s.size == 0:
        return None
    if not np.all(np.isfinite(s)):
        raise ConfigError(f"region scores must be finite, got {s.tolist()}")
    return float(np.dot(area_weights(areas), s))


def mix_scores(s_global: float, s_local: float | None, lam: float = 1.0) -> float:
    """Final LLM-IQA score ``(s_global + λ·s_local) / (1 + λ)`` (METHODS.md §1, decision 5).

    The paper writes ``s_global + λ·s_local``; dividing by ``1 + λ`` keeps the score on the level scale.
    ``λ = 0`` gives the global score; ``s_local = None`` (no regions) also gives the global score.

    Raises:
        ConfigError: ``λ`` is negative or not finite, or a score is not finite.
    """
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ConfigError(f"lambda must be a finite number >= 0, got {lam!r}")
    g = float(s_global)
    if not math.isfinite(g):
        raise ConfigError(f"global score must be finite, got {s_global!r}")
    if s_local is None:
        return g
    loc = float(s_local)
    if not math.isfinite(loc):
        raise ConfigError(f"local score must be finite, got {s_local!r}")
    return (g + lam * loc) / (1.0 + lam)
