"""Pure numpy pieces of SAM 2's automatic mask generator (Ravi et al. 2024), written without torchvision.

The official generator (``sam2.automatic_mask_generator``) and transformers' mask-generation pipeline both call
``torchvision.ops.batched_nms``; lmmiqa cannot depend on torchvision (see ENVIRONMENT.md), so the grid, the
stability score, box IoU/NMS, crop boxes and small-region clean-up live here as small pure functions, checked
by hand-made tests. LLM-IQA (Dog-IQA, Liu et al. 2024) uses the generator at a coarse granularity;
:func:`select_coarse` implements the "keep the largest, mostly non-overlapping masks" step lmmiqa adds for that.

Boxes are ``[x0, y0, x1, y1]`` with exclusive ends (so a box's area is ``(x1 - x0)·(y1 - y0)``).
"""

from __future__ import annotations

import numpy as np

from lmmiqa.errors import ConfigError


def point_grid(n_per_side: int) -> np.ndarray:
    """A regular ``n×n`` grid of points in normalised ``[0, 1]²`` image coordinates, ``[n², 2]`` as ``(x, y)``.

    Points sit at cell centres (offset ``1/(2n)`` from the borders), as in SAM's ``build_point_grid``.
    """
    if int(n_per_side) < 1:
        raise ConfigError(f"points per side must be >= 1, got {n_per_side}")
    n = int(n_per_side)
    offset = 1.0 / (2 * n)
    side = np.linspace(offset, 1.0 - offset, n)
    xs = np.tile(side[None, :], (n, 1))
    ys = np.tile(side[:, None], (1, n))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def stability_score(logits: np.ndarray, mask_threshold: float = 0.0, offset: float = 1.0) -> np.ndarray:
    """SAM's stability score: IoU between the masks thresholded at ``threshold + offset`` and ``- offset``.

    The high-threshold mask is always inside the low-threshold one, so the IoU is
    ``|logits > thr + off| / |logits > thr - off|``. A mask whose low-threshold version is empty gets 0.

    Args:
        logits: mask logits ``[..., H, W]``.
        mask_threshold: the binarisation threshold (0 for SAM's logits).
        offset: the threshold shift (SAM default 1.0).

    Returns:
        float64 array of shape ``logits.shape[:-2]``.
    """
    x = np.asarray(logits)
    inter = (x > (mask_threshold + offset)).sum(axis=(-1, -2), dtype=np.int64)
    union = (x > (mask_threshold - offset)).sum(axis=(-1, -2), dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return score.astype(np.float64)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``[N, 4]`` boxes (exclusive ends); degenerate boxes have area 0."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[N, M]`` of two sets of boxes (exclusive ends); 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression (what ``torchvision.ops.nms`` computes).

    Boxes are visited by decreasing score (ties: lower index first); a box is dropped when its IoU with an
    already kept box is strictly greater than ``iou_threshold``.

    Returns:
        int64 indices of the kept boxes, by decreasing score.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if b.shape[0] != s.shape[0]:
        raise ConfigError(f"{b.shape[0]} boxes but {s.shape[0]} scores")
    if b.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-s, kind="stable")
    iou = box_iou(b, b)
    suppressed = np.zeros(b.shape[0], dtype=bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def crop_boxes(
    width: int, height: int, n_layers: int, overlap_ratio: float = 512 / 1500
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes of SAM's multi-crop generator: the full image, then ``(2^i)²`` overlapping crops per layer i.

    Returns:
        ``(boxes, layer_index)``: boxes ``[x0, y0, x1, y1]`` (exclusive ends) and the layer of each box.
    """
    if int(n_layers) < 0:
        raise ConfigError(f"crop_n_layers must be >= 0, got {n_layers}")
    boxes: list[list[int]] = [[0, 0, int(width), int(height)]]
    layers = [0]
    short = min(width, height)
    for i in range(1, int(n_layers) + 1):
        n_per_side = 2**i
        overlap = int(overlap_ratio * short * (2 / n_per_side))
        crop_w = int(np.ceil((overlap * (n_per_side - 1) + width) / n_per_side))
        crop_h = int(np.ceil((overlap * (n_per_side - 1) + height) / n_per_side))
        x0s = [int((crop_w - overlap) * k) for k in range(n_per_side)]
        y0s = [int((crop_h - overlap) * k) for k in range(n_per_side)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
                layers.append(i)
    return boxes, layers


def near_crop_edge(
    boxes: np.ndarray, crop_box: list[int] | np.ndarray, image_box: list[int] | np.ndarray, atol: float = 20.0
) -> np.ndarray:
    """True for boxes (in crop coordinates) that touch the crop's border where that border is not the image's.

    Masks cut by a crop border are incomplete; SAM drops them and relies on other crops.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    crop = np.asarray(crop_box, dtype=np.float64)
    full = np.asarray(image_box, dtype=np.float64)
    b = b + np.array([crop[0], crop[1], crop[0], crop[1]])
    near_crop = np.isclose(b, crop[None, :], atol=atol, rtol=0)
    near_image = np.isclose(b, full[None, :], atol=atol, rtol=0)
    return np.any(near_crop & ~near_image, axis=1)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Remove small disconnected islands (``mode="islands"``) or fill small holes (``mode="holes"``).

    Components of fewer than ``area_thresh`` pixels are changed; in islands mode the largest component is kept
    even when it is small. Uses ``scipy.ndimage.label`` (8-connectivity, as OpenCV in SAM).

    Returns:
        ``(mask, changed)``.
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ConfigError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    working = (~mask) if fill_holes else mask
    labels, n = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask, False
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    keep_labels = [i + 1 for i in range(n) if (i + 1) not in small]
    if not fill_holes and not keep_labels:
        keep_labels = [int(np.argmax(sizes)) + 1]
    if fill_holes:
        # holes that are small become foreground
        out = mask | np.isin(labels, small)
    else:
        out = np.isin(labels, keep_labels)
    return out, True


def select_coarse(
    masks: np.ndarray, max_masks: int | None = None, max_overlap: float | None = None
) -> np.ndarray:
    """Keep the largest masks, skipping any that mostly overlaps larger ones (a coarse granularity).

    Masks are visited by decreasing area (ties: lower index first). A mask is skipped when more than
    ``max_overlap`` of its own area is already covered by the masks kept so far; at most ``max_masks`` masks
    are kept. ``None`` disables either rule.

    Returns:
        int64 indices of the kept masks, by decreasing area.
    """
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 3:
        raise ConfigError(f"masks must be [N, H, W], got shape {m.shape}")
    if max_masks is not None and int(max_masks) < 1:
        raise ConfigError(f"max_masks must be >= 1 or None, got {max_masks}")
    if max_overlap is not None and not (0.0 <= float(max_overlap) <= 1.0):
        raise ConfigError(f"max_overlap must be in [0, 1] or None, got {max_overlap}")
    areas = m.sum(axis=(1, 2))
    order = np.argsort(-areas, kind="stable")
    covered = np.zeros(m.shape[1:], dtype=bool)
    keep: list[int] = []
    for i in order:
        if areas[i] == 0:
            continue
        if max_masks is not None and len(keep) >= int(max_masks):
            break
        if max_overlap is not None and keep:
            overlap = np.count_nonzero(covered & m[i]) / areas[i]
            if overlap > float(max_overlap):
                continue
        keep.append(int(i))
        covered |= m[i]
    return np.asarray(keep, dtype=np.int64)
