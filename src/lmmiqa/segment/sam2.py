"""SAM 2 automatic mask generation through transformers, without torchvision.

SAM 2 (Ravi et al. 2024, "SAM 2: Segment Anything in Images and Videos") is the segmenter LLM-IQA (Dog-IQA,
Liu et al. 2024) uses to find local regions, tuned to a coarse granularity (~7 masks per SPAQ image).

Why this file exists: the official ``sam2`` package, transformers' ``Sam2ImageProcessor`` and its
mask-generation pipeline all import torchvision, which lmmiqa cannot have (ENVIRONMENT.md). So only
transformers' ``Sam2Model`` is used, and the rest of the automatic mask generator is reimplemented here:

1. Preprocess: resize to the model's square input (1024² for released checkpoints; PIL bilinear), scale to
   [0, 1], normalise with the mean/std of the checkpoint's ``preprocessor_config.json`` (ImageNet by default).
2. One image-encoder forward per image (batched over images and crops).
3. A regular grid of ``points_per_side²`` single-point prompts, decoded ``points_per_batch`` at a time, three
   masks per point (``multimask_output``).
4. Filter: predicted IoU ``> pred_iou_thresh``; upsample the low-resolution logits (bilinear) to the working
   resolution; stability score ``>= stability_score_thresh``; binarise at ``mask_threshold``; drop masks cut by
   a crop border (crop layers only).
5. Box NMS within each crop (``box_nms_thresh``), then across crops (``crop_nms_thresh``, preferring smaller
   crops), then optional small-island/hole clean-up (``min_mask_region_area``) followed by NMS again.
6. lmmiqa's coarse step (:func:`~lmmiqa.segment.amg.select_coarse`): keep the largest masks, skip masks that
   mostly lie inside larger kept ones (``max_overlap``), at most ``max_masks``.

The "working resolution" is the image scaled so that its longer side is at most ``work_max_side`` (never
upscaled); for larger photos the final masks are upsampled to the original size (nearest), which bounds memory.
The mask-to-mask refinement (``use_m2m``) of the official generator is not implemented.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lmmiqa.errors import ConfigError, ModelLoadError, download_hint, require, spell
from lmmiqa.segment import amg
from lmmiqa.segment.base import Segmenter, SegmenterConfig, as_rgb_image, empty_masks
from lmmiqa.segment.regions import masks_to_boxes

log = logging.getLogger(__name__)

DEFAULT_SAM2_MODEL = "facebook/sam2.1-hiera-large"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DTYPES = ("float32", "bfloat16", "float16")


def _model_option(folder: str) -> str:
    """How the user passes a SAM 2 folder, in the words of the interface in use."""
    return spell(
        cli=f"--option segmenter_options='{{\"model\": \"{folder}\"}}'",
        python=f"model={folder!r} (llm-iqa: segmenter_options={{'model': {folder!r}}})",
    )


def _fallback_hint() -> str:
    return spell(
        cli="Or use the weight-free segmenter: --segmenter felzenszwalb.",
        python="Or use the weight-free segmenter: segmenter='felzenszwalb'.",
    )


@dataclass
class Sam2SegmenterConfig(SegmenterConfig):
    """Options of the SAM 2 automatic mask generator.

    The defaults are coarse on purpose (LLM-IQA wants ~5–10 regions per photo): a 16×16 point grid, SAM's high
    quality thresholds, and at most 10 of the largest, mostly non-overlapping masks. The official SAM 2
    generator's defaults are ``points_per_side=32``, ``pred_iou_thresh=0.8``, ``max_masks=None``,
    ``max_overlap=None``.

    Attributes:
        model: a hub id of a transformers-format SAM 2 / 2.1 checkpoint (e.g. ``facebook/sam2.1-hiera-large``,
            ``facebook/sam2.1-hiera-tiny``) or a local folder with ``config.json`` and the weights.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (half precision is meant for CUDA).
        local_files_only: never touch the network (use the local folder or the hub cache).
        revision: hub revision (branch, tag or commit).
        points_per_side: the prompt grid has ``points_per_side²`` points (per crop layer 0).
        points_per_batch: point prompts decoded per mask-decoder forward.
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables).
        stability_score_offset: logit shift used by the stability score.
        mask_threshold: logit threshold that binarises masks.
        box_nms_thresh: box IoU above which the lower-scoring of two masks is dropped.
        min_mask_region_area: remove islands and fill holes smaller than this many pixels (original image
            pixels; 0 disables).
        crop_n_layers: extra layers of image crops (layer i has ``(2^i)²`` crops); 0 = whole image only.
        crop_nms_thresh: box IoU for NMS across crops.
        crop_overlap_ratio: how much neighbouring crops overlap (fraction of the shorter side, layer 1).
        crop_n_points_downscale_factor: points per side in layer i = ``points_per_side / factor^i``.
        multimask_output: three masks per point (SAM's default) instead of one.
        max_masks: keep at most this many masks (largest first); ``None`` keeps all.
        max_overlap: skip a mask when more than this fraction of it is covered by larger kept masks;
            ``None`` keeps overlapping masks.
        work_max_side: longer side of the working resolution (filters, NMS and clean-up run there).
        image_batch_size: images (and crops) per image-encoder forward in :meth:`Sam2Segmenter.segment_many`.
    """

    model: str = DEFAULT_SAM2_MODEL
    device: str = "auto"
    dtype: str = "float32"
    local_files_only: bool = False
    revision: str | None = None
    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    multimask_output: bool = True
    max_masks: int | None = 10
    max_overlap: float | None = 0.5
    work_max_side: int = 1024
    image_batch_size: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model must be a hub id or a local folder of a SAM 2 checkpoint")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        for name in ("points_per_side", "points_per_batch", "work_max_side", "image_batch_size"):
            value = int(getattr(self, name))
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
            setattr(self, name, value)
        for name in ("min_mask_region_area", "crop_n_layers"):
            value = int(getattr(self, name))
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
            setattr(self, name, value)
        if int(self.crop_n_points_downscale_factor) < 1:
            raise ConfigError("crop_n_points_downscale_factor must be >= 1")
        self.crop_n_points_downscale_factor = int(self.crop_n_points_downscale_factor)
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
            setattr(self, name, value)
        if not 0.0 <= float(self.crop_overlap_ratio) < 1.0:
            raise ConfigError(f"crop_overlap_ratio must be in [0, 1), got {self.crop_overlap_ratio!r}")
        if float(self.stability_score_offset) <= 0:
            raise ConfigError(f"stability_score_offset must be > 0, got {self.stability_score_offset!r}")
        if self.max_masks is not None:
            if int(self.max_masks) < 1:
                raise ConfigError(f"max_masks must be >= 1 or None, got {self.max_masks!r}")
            self.max_masks = int(self.max_masks)
        if self.max_overlap is not None and not 0.0 <= float(self.max_overlap) <= 1.0:
            raise ConfigError(f"max_overlap must be in [0, 1] or None, got {self.max_overlap!r}")


@dataclass
class _CropJob:
    """One encoder input: an image (index) and a crop box in original pixels and in working pixels."""

    image_index: int
    crop: list[int]  # original pixels, exclusive ends
    work_crop: list[int]  # working pixels, exclusive ends
    layer: int


@dataclass
class _Candidates:
    """Masks that survived the filters, in working pixels of the whole image (bit-packed along width)."""

    packed: list[np.ndarray]
    boxes: list[np.ndarray]
    scores: list[np.ndarray]
    crop_areas: list[np.ndarray]


class Sam2Segmenter(Segmenter):
    """SAM 2 / 2.1 automatic mask generator (transformers ``Sam2Model``; no torchvision)."""

    name: ClassVar[str] = "sam2"
    config_cls: ClassVar[type] = Sam2SegmenterConfig

    def __init__(self, config: Sam2SegmenterConfig | None = None, *, model: Any | None = None) -> None:
        """Create the segmenter; weights load on first use.

        Args:
            config: options (see :class:`Sam2SegmenterConfig`).
            model: an already loaded transformers ``Sam2Model`` to use instead of ``config.model``.
        """
        super().__init__(config)
        self._model = model
        self._mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
        self._std = np.asarray(IMAGENET_STD, dtype=np.float32)
        self._device: Any = None
        self._dtype: Any = None

    # ------------------------------------------------------------------ loading
    def _load(self) -> Any:
        if self._model is not None and self._device is not None:
            return self._model
        torch = require("torch", "hf", "SAM 2 segmentation")
        transformers = require("transformers", "hf", "SAM 2 segmentation")
        cfg: Sam2SegmenterConfig = self.config
        from lmmiqa.torch_utils import pick_device

        device = pick_device(cfg.device)
        dtype = getattr(torch, cfg.dtype)
        if self._model is None:
            model_cls = getattr(transformers, "Sam2Model", None)
            if model_cls is None:
                raise ModelLoadError(
                    f"transformers {transformers.__version__} has no Sam2Model; SAM 2 needs transformers >= 4.56"
                )
            ref = cfg.model
            looks_local = ref.startswith(("/", "./", "../", "~", "\\")) or os.path.exists(ref)
            if looks_local and not os.path.isdir(os.path.expanduser(ref)):
                raise ModelLoadError(
                    f"SAM 2 checkpoint folder {ref!r} does not exist; pass a folder that holds config.json and "
                    "model.safetensors of a transformers-format SAM 2 checkpoint"
                )
            local_only = cfg.local_files_only
            if not looks_local:
                # offline and not cached, or the hub unreachable: fail now, not after minutes of hub retries
                from lmmiqa.hub import resolve_local_only

                try:
                    local_only = resolve_local_only(
                        ref, cfg.local_files_only, revision=cfg.revision, what="the SAM 2 checkpoint",
                        folder="./sam2", pass_as=_model_option("./sam2"),
                    )
                except ModelLoadError as err:
                    raise ModelLoadError(f"{err} {_fallback_hint()}") from err
            try:
                model = model_cls.from_pretrained(
                    os.path.expanduser(ref) if looks_local else ref,
                    local_files_only=local_only,
                    revision=cfg.revision,
                )
            except (OSError, ValueError) as err:
                raise ModelLoadError(
                    f"could not load SAM 2 weights {cfg.model!r} ({type(err).__name__}: {err}). Without network "
                    "access, download a transformers-format checkpoint once on a connected machine "
                    f"(`{download_hint(DEFAULT_SAM2_MODEL if looks_local else ref, './sam2')}`), copy the folder here and pass it as "
                    f"{_model_option('./sam2')}. {_fallback_hint()}"
                ) from err
            if getattr(model.config, "model_type", None) != "sam2":
                raise ModelLoadError(
                    f"{cfg.model!r} is a {getattr(model.config, 'model_type', '?')!r} checkpoint, not SAM 2 ('sam2')"
                )
            self._read_preprocessor_config(os.path.expanduser(ref) if looks_local else ref)
            self._model = model
        self._model.to(device=device, dtype=dtype).eval()
        self._device, self._dtype = device, dtype
        return self._model

    def _read_preprocessor_config(self, ref: str) -> None:
        """Use the checkpoint's normalisation constants when it ships a ``preprocessor_config.json``."""
        from transformers.utils import cached_file

        cfg: Sam2SegmenterConfig = self.config
        try:
            path = cached_file(
                ref,
                "preprocessor_config.json",
                local_files_only=cfg.local_files_only,
                revision=cfg.revision,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except OSError as err:
            log.info("sam2: no preprocessor_config.json for %s (%s); using ImageNet mean/std", ref, err)
            return
        if not path:
            return
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        mean, std = data.get("image_mean"), data.get("image_std")
        if mean is not None and std is not None:
            self._mean = np.asarray(mean, dtype=np.float32)
            self._std = np.asarray(std, dtype=np.float32)

    @property
    def input_size(self) -> int:
        """Side of the square image the loaded model takes (1024 for released checkpoints)."""
        model = self._load()
        size = model.config.prompt_encoder_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    # ------------------------------------------------------------------ public API
    def segment(self, image: Any) -> np.ndarray:
        """Masks ``bool [N, H, W]`` of one image (largest first)."""
        return self.segment_many([image])[0]

    def segment_many(self, images: Sequence[Any]) -> list[np.ndarray]:
        """Masks of several images; image-encoder forwards are batched over images and crops."""
        rgb = [as_rgb_image(img) for img in images]
        if not rgb:
            return []
        model = self._load()
        cfg: Sam2SegmenterConfig = self.config
        jobs: list[_CropJob] = []
        scales: list[float] = []
        for i, img in enumerate(rgb):
            w, h = img.size
            scale = min(1.0, cfg.work_max_side / max(w, h))
            scales.append(scale)
            boxes, layers = amg.crop_boxes(w, h, cfg.crop_n_layers, cfg.crop_overlap_ratio)
            wh, ww = _work_hw(img, scale)
            for box, layer in zip(boxes, layers):
                x0, y0 = min(round(box[0] * scale), ww - 1), min(round(box[1] * scale), wh - 1)
                x1, y1 = (
                    max(x0 + 1, min(round(box[2] * scale), ww)),
                    max(y0 + 1, min(round(box[3] * scale), wh)),
                )
                jobs.append(_CropJob(i, box, [x0, y0, x1, y1], layer))
        candidates = [_Candidates([], [], [], []) for _ in rgb]
        for start in range(0, len(jobs), cfg.image_batch_size):
            chunk = jobs[start : start + cfg.image_batch_size]
            embeddings = self._encode([rgb[j.image_index].crop(tuple(j.crop)) for j in chunk])
            for k, job in enumerate(chunk):
                img, scale = rgb[job.image_index], scales[job.image_index]
                work_hw = _work_hw(img, scale)
                self._decode_crop(
                    model,
                    [e[k : k + 1] for e in embeddings],
                    job,
                    work_hw,
                    scale,
                    candidates[job.image_index],
                )
        out = []
        for img, cand, scale in zip(rgb, candidates, scales):
            masks = self._finalize(cand, _work_hw(img, scale), scale)
            out.append(_resize_masks_nearest(masks, (img.height, img.width)))
        return out

    # ------------------------------------------------------------------ steps
    def _encode(self, crops: list[Any]) -> list[Any]:
        """Image-encoder forward of a batch of crops (PIL), resized to the model's square input."""
        import torch
        from PIL import Image

        side = self.input_size
        arrays = []
        for crop in crops:
            resized = crop.resize((side, side), Image.BILINEAR)
            x = np.asarray(resized, dtype=np.float32) / 255.0
            x = (x - self._mean) / self._std
            arrays.append(x.transpose(2, 0, 1))
        pixel_values = torch.from_numpy(np.stack(arrays)).to(self._device, self._dtype)
        with torch.inference_mode():
            return list(self._model.get_image_embeddings(pixel_values))

    def _decode_crop(
        self,
        model: Any,
        embeddings: list[Any],
        job: _CropJob,
        work_hw: tuple[int, int],
        scale: float,
        cand: _Candidates,
    ) -> None:
        """Decode the point grid of one crop and keep the masks that pass the filters (then NMS in the crop)."""
        import torch
        import torch.nn.functional as F

        cfg: Sam2SegmenterConfig = self.config
        side = self.input_size
        n_side = max(1, cfg.points_per_side // (cfg.crop_n_points_downscale_factor**job.layer))
        grid = amg.point_grid(n_side) * side  # crop resized to side×side
        wx0, wy0, wx1, wy1 = job.work_crop
        crop_hw = (max(1, wy1 - wy0), max(1, wx1 - wx0))
        atol = max(1.0, 20.0 * scale)  # SAM's 20 px (original pixels) tolerance for crop borders
        masks_l: list[np.ndarray] = []
        boxes_l: list[np.ndarray] = []
        scores_l: list[np.ndarray] = []
        for start in range(0, len(grid), cfg.points_per_batch):
            pts = grid[start : start + cfg.points_per_batch]
            points = torch.as_tensor(pts, dtype=torch.float32, device=self._device)[None, :, None, :]
            labels = torch.ones(points.shape[:3], dtype=torch.int64, device=self._device)
            with torch.inference_mode():
                out = model(
                    image_embeddings=embeddings,
                    input_points=points,
                    input_labels=labels,
                    multimask_output=cfg.multimask_output,
                )
            low = out.pred_masks[0].flatten(0, 1).float()  # [P*M, h, w]
            iou = out.iou_scores[0].flatten(0, 1).float()  # [P*M]
            keep = (
                iou > cfg.pred_iou_thresh
                if cfg.pred_iou_thresh > 0
                else torch.ones_like(iou, dtype=torch.bool)
            )
            low, iou = low[keep], iou[keep]
            for s in range(0, low.shape[0], 32):
                with torch.inference_mode():
                    up = F.interpolate(low[s : s + 32, None], crop_hw, mode="bilinear", align_corners=False)
                logits = up[:, 0].cpu().numpy()
                scores = iou[s : s + 32].cpu().numpy().astype(np.float64)
                if cfg.stability_score_thresh > 0:
                    stab = amg.stability_score(logits, cfg.mask_threshold, cfg.stability_score_offset)
                    ok = stab >= cfg.stability_score_thresh
                    logits, scores = logits[ok], scores[ok]
                if logits.shape[0] == 0:
                    continue
                binary = logits > cfg.mask_threshold
                boxes = masks_to_boxes(binary)
                nonempty = boxes[:, 2] > boxes[:, 0]
                binary, boxes, scores = binary[nonempty], boxes[nonempty], scores[nonempty]
                if job.layer > 0 and len(boxes):
                    edge = amg.near_crop_edge(boxes, job.work_crop, [0, 0, work_hw[1], work_hw[0]], atol=atol)
                    binary, boxes, scores = binary[~edge], boxes[~edge], scores[~edge]
                masks_l.extend(np.packbits(binary, axis=-1))
                boxes_l.append(boxes)
                scores_l.append(scores)
        if not masks_l:
            return
        boxes = np.concatenate(boxes_l)
        scores = np.concatenate(scores_l)
        keep_idx = amg.box_nms(boxes, scores, cfg.box_nms_thresh)
        crop_area = float((wx1 - wx0) * (wy1 - wy0))
        for i in keep_idx:
            mask = np.unpackbits(masks_l[i], axis=-1, count=crop_hw[1]).astype(bool)
            full = np.zeros(work_hw, dtype=bool)
            full[wy0 : wy0 + crop_hw[0], wx0 : wx0 + crop_hw[1]] = mask[
                : work_hw[0] - wy0, : work_hw[1] - wx0
            ]
            cand.packed.append(np.packbits(full, axis=-1))
            cand.boxes.append(boxes[i] + np.array([wx0, wy0, wx0, wy0]))
            cand.scores.append(np.asarray(scores[i]))
            cand.crop_areas.append(np.asarray(crop_area))

    def _finalize(self, cand: _Candidates, work_hw: tuple[int, int], scale: float) -> np.ndarray:
        """NMS across crops, small-region clean-up, coarse selection; masks at the working resolution."""
        cfg: Sam2SegmenterConfig = self.config
        h, w = work_hw
        if not cand.packed:
            return empty_masks(h, w)
        boxes = np.stack(cand.boxes).astype(np.float64)
        crop_areas = np.stack(cand.crop_areas)
        masks = np.stack([np.unpackbits(p, axis=-1, count=w).astype(bool) for p in cand.packed])
        if cfg.crop_n_layers > 0 and len(np.unique(crop_areas)) > 1:
            keep = amg.box_nms(boxes, 1.0 / np.maximum(crop_areas, 1.0), cfg.crop_nms_thresh)
            masks, boxes = masks[keep], boxes[keep]
        if cfg.min_mask_region_area > 0:
            area_thresh = cfg.min_mask_region_area * scale * scale
            cleaned, unchanged = [], []
            for m in masks:
                m, changed_holes = amg.remove_small_regions(m, area_thresh, "holes")
                m, changed_islands = amg.remove_small_regions(m, area_thresh, "islands")
                cleaned.append(m)
                unchanged.append(0.0 if (changed_holes or changed_islands) else 1.0)
            masks = np.stack(cleaned)
            boxes = masks_to_boxes(masks).astype(np.float64)
            keep = amg.box_nms(boxes, np.asarray(unchanged), cfg.box_nms_thresh)
            masks = masks[keep]
        masks = masks[masks.any(axis=(1, 2))]
        order = amg.select_coarse(masks, cfg.max_masks, cfg.max_overlap)
        return masks[order]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["model"] = self.config.model
        return d


def _work_hw(image: Any, scale: float) -> tuple[int, int]:
    """``(H, W)`` of the working resolution of an image."""
    return max(1, round(image.height * scale)), max(1, round(image.width * scale))


def _resize_masks_nearest(masks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``bool [N, h, w]`` masks to ``[N, H, W]`` (pixel-centre sampling)."""
    _, h, w = masks.shape
    H, W = hw
    if (h, w) == (H, W):
        return masks
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return masks[:, rows][:, :, cols]
