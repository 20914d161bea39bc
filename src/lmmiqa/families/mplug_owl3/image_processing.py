"""mPLUG-Owl3's image preprocessing, reimplemented with PIL and numpy (no torchvision).

What the published processor does with each image (``image_processing_mplugowl3.py`` of
mPLUG/mPLUG-Owl3-7B-240728, default settings), and so what this module does:

1. **Pick a grid** ``(rows, cols)`` among ``(2,2), (1,3), (1,4), (3,1), (4,1), (2,3), (3,2)`` (at most 6 tiles; no
   1×1: every image is cut) by the "docowl" rule: maximise ``100·shape_iou + iou``, where ``iou`` is the IoU of the
   grid's box ``(cols·384) × (rows·384)`` with the image's box ``W × H`` (both anchored at the origin) and
   ``shape_iou`` the IoU of the grid's box with a box of the grid's width and the image's aspect ratio
   (``H/W · cols·384``, truncated to an integer); the first grid wins ties. Arithmetic as the published code: integer
   boxes, IoU in float32 with ``1e-5`` added to the union.
2. **Tiles**: resize the image (PIL bicubic) to ``(cols·384) × (rows·384)`` and cut it into ``rows × cols`` tiles of
   384², row by row; then a **global view**: the whole image resized (bicubic) to 384².
3. Every view: ``x / 255``, then ``(x − 0.5) / 0.5`` (float32, channels first).
4. The prompt: the image's ``<|image|>`` placeholder becomes ``"Cut to {rows} rows {cols} columns with a global
   view\\n"`` + one line per row of ``"subimg({i},{j})<|image|>"`` joined by spaces + ``"\\nglobal_view<|image|>"``
   (one placeholder per view).

Each view is one image for the model (729 SigLIP features), so an image costs ``rows·cols + 1`` views (5 to 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The published processor's grids ``(rows, cols)`` ("grid_squ_6"), in its order (ties go to the first).
GRIDS: tuple[tuple[int, int], ...] = ((2, 2), (1, 3), (1, 4), (3, 1), (4, 1), (2, 3), (3, 2))
IMAGE_SIZE = 384
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
IMAGE_TOKEN = "<|image|>"


def _area(box: np.ndarray) -> np.ndarray:
    return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])


def _iou(box_a: np.ndarray, area_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """IoU of integer boxes ``[N, 4]`` with ``[M, 4]`` -> float32 ``[N, M]``, union + 1e-5 (the published arithmetic)."""
    area_b = _area(box_b)
    lt = np.maximum(box_a[:, None, :2], box_b[None, :, :2])
    rb = np.minimum(box_a[:, None, 2:], box_b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter.astype(np.float32) / (union.astype(np.float32) + np.float32(1e-5))


def select_grid(width: int, height: int, image_size: int = IMAGE_SIZE, grids: Sequence[tuple[int, int]] = GRIDS) -> tuple[int, int]:
    """The ``(rows, cols)`` grid the published processor cuts a ``width × height`` image into (module docstring)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    anchors = np.array([[0, 0, c * image_size, r * image_size] for r, c in grids], dtype=np.int64)
    areas = _area(anchors)
    image_box = np.array([[0, 0, width, height]], dtype=np.int64)
    iou = _iou(anchors, areas, image_box)[:, 0]
    shaped = anchors.copy()
    # float32 product truncated into the integer box, as the published code assigns it into an int64 tensor
    shaped[:, 3] = (np.float32(height / width) * anchors[:, 2].astype(np.float32)).astype(np.int64)
    shape_iou = np.diag(_iou(anchors, areas, shaped))
    score = shape_iou * np.float32(100) + iou
    return grids[int(np.argmax(score))]


def cut_prompt(rows: int, cols: int, token: str = IMAGE_TOKEN) -> str:
    """The text that replaces one image's placeholder (one ``token`` per view, the global view last)."""
    lines = "\n".join(" ".join(f"subimg({i},{j}){token}" for j in range(cols)) for i in range(rows))
    return f"Cut to {rows} rows {cols} columns with a global view\n{lines}\nglobal_view{token}"


def _to_array(image: Any) -> np.ndarray:
    """A PIL RGB image as float32 ``[3, H, W]`` normalised like the published processor."""
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {arr.shape}")
    x = arr.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN[0])) / np.float32(STD[0])
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@dataclass(frozen=True)
class ProcessedImage:
    """One image as the model takes it: ``views`` float32 ``[rows·cols + 1, 3, S, S]`` (tiles row by row, then the
    global view) and its grid."""

    views: np.ndarray
    rows: int
    cols: int

    @property
    def prompt(self) -> str:
        return cut_prompt(self.rows, self.cols)


class MplugOwl3ImageProcessor:
    """Tiles + global view per image (see the module docstring); ``image_size`` is the vision tower's input side."""

    def __init__(self, image_size: int = IMAGE_SIZE) -> None:
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = int(image_size)

    def grid(self, width: int, height: int) -> tuple[int, int]:
        return select_grid(width, height, self.image_size)

    def num_views(self, width: int, height: int) -> int:
        rows, cols = self.grid(width, height)
        return rows * cols + 1

    def process(self, image: Any) -> ProcessedImage:
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        img = image if image.mode == "RGB" else image.convert("RGB")
        size = self.image_size
        rows, cols = self.grid(*img.size)
        tiled = _to_array(img.resize((cols * size, rows * size), Image.BICUBIC))
        tiles = tiled.reshape(3, rows, size, cols, size).transpose(1, 3, 0, 2, 4).reshape(rows * cols, 3, size, size)
        whole = _to_array(img.resize((size, size), Image.BICUBIC))[None]
        return ProcessedImage(np.concatenate([tiles, whole], axis=0), rows, cols)

    def to_dict(self) -> dict[str, Any]:
        return {"image_processor_type": "MplugOwl3ImageProcessor", "image_size": self.image_size}


__all__ = ["GRIDS", "IMAGE_SIZE", "IMAGE_TOKEN", "MplugOwl3ImageProcessor", "ProcessedImage", "cut_prompt", "select_grid"]
