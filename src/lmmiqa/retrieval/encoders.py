"""Image encoders for IQARAG reference banks (METHODS §2.2): one pooled float32 vector per image.

Encoders are named by a *spec* string ``KIND[:MODEL]`` and registered in :data:`lmmiqa.registry.ENCODERS`:

* ``vision-tower`` (the IQARAG paper's best): the MLLM's own vision encoder. Images go through the VLM's image
  processor and ``model.get_image_features`` (which transformers' VLMs implement: Qwen2.5-VL, Qwen3-VL,
  LLaVA-OneVision, InternVL, ...); the image tokens it returns — the vision tower's output after the
  projector/merger, i.e. exactly what the language model sees — are mean-pooled per image. The model is the one
  of ``--model`` (or ``vision-tower:MODEL``) and is loaded through the transformers backend, so a scorer of the
  same model shares the weights.
* ``clip:MODEL`` and ``siglip:MODEL``: ``CLIPModel`` / ``SiglipModel.get_image_features`` (the projected image
  embedding) with the checkpoint's own image processor (PIL backend; no torchvision).
* ``dinov2:MODEL``: ``Dinov2Model`` (``AutoModel``); ``pooling="cls"`` (default, the layer-normed CLS token) or
  ``"mean"`` (mean of the patch tokens).

Every encoder returns raw pooled vectors (float32, [N, D]); L2 normalization is a property of the bank
(:mod:`lmmiqa.retrieval.bank`), applied there to bank and query vectors alike. torch and transformers are
imported lazily.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lmmiqa.errors import ConfigError, ModelLoadError, UnsupportedError, require
from lmmiqa.torch_utils import pick_device, pick_dtype

log = logging.getLogger(__name__)

#: pooling choices per encoder kind (the first is the default): ``mean`` of the image tokens, ``cls`` token, or
#: ``projection`` (the model's own pooled and projected image embedding, CLIP/SigLIP)
POOLINGS: dict[str, tuple[str, ...]] = {
    "vision-tower": ("mean",),
    "clip": ("projection",),
    "siglip": ("projection",),
    "dinov2": ("cls", "mean"),
}
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is, as saved in ``bank.json``.

    Attributes:
        kind: registered encoder name (``vision-tower``, ``clip``, ``siglip``, ``dinov2``).
        model: hub id or local folder of the weights.
        pooling: how token features become one vector (see :data:`POOLINGS`; ``None`` = the kind's default).
    """

    kind: str
    model: str
    pooling: str | None = None

    def __post_init__(self) -> None:
        from lmmiqa import registry

        object.__setattr__(self, "kind", registry.canonical("encoder", self.kind))
        if not self.model:
            raise ConfigError(f"encoder {self.kind!r} needs a model (e.g. {self.kind}:<hub id or folder>)")
        allowed = POOLINGS.get(self.kind, ("mean",))
        if self.pooling is None:
            object.__setattr__(self, "pooling", allowed[0])
        elif self.pooling not in allowed:
            raise ConfigError(
                f"pooling {self.pooling!r} is not available for {self.kind!r} encoders; choose: {', '.join(allowed)}"
            )

    @property
    def spec(self) -> str:
        """The spec string ``kind:model``."""
        return f"{self.kind}:{self.model}"

    @classmethod
    def parse(cls, spec: str, model: str | None = None, pooling: str | None = None) -> EncoderSpec:
        """Parse ``KIND[:MODEL]``; ``model`` supplies (or must equal) the model part.

        Raises:
            UnknownNameError: unknown kind (lists the valid ones).
            ConfigError: no model, or two different models.
        """
        from lmmiqa import registry

        text = (spec or "").strip()
        kind, sep, part = text.partition(":")
        kind = registry.canonical("encoder", kind)
        part = part.strip() if sep else ""
        if part and model and part != model:
            raise ConfigError(f"encoder {spec!r} names model {part!r} but model={model!r} was also given")
        chosen = part or (model or "")
        if not chosen:
            hint = "--model MODEL" if kind == "vision-tower" else f"{kind}:<hub id or folder>"
            raise ConfigError(f"encoder {kind!r} needs a model: give {hint}")
        return cls(kind=kind, model=chosen, pooling=pooling)

    def to_dict(self) -> dict[str, str]:
        return {"spec": self.spec, "kind": self.kind, "model": self.model, "pooling": str(self.pooling)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSpec:
        pooling = data.get("pooling")
        return cls(kind=str(data["kind"]), model=str(data["model"]), pooling=str(pooling) if pooling else None)


@dataclass
class EncoderConfig:
    """Runtime options of an encoder (not part of what the vectors mean).

    Attributes:
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
        dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``float32``, ``bfloat16``, ``float16``. Vectors are
            always returned as float32.
        batch_size: images per forward pass.
        local_files_only: never contact the hub (default: from ``HF_HUB_OFFLINE``).
    """

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    local_files_only: bool | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        self.batch_size = int(self.batch_size)


class Encoder(ABC):
    """Maps RGB PIL images to one float32 vector each.

    Attributes:
        spec: what the vectors are (saved in ``bank.json``; queries must use the same).
        config: runtime options.
    """

    name: ClassVar[str] = "base"

    def __init__(self, spec: EncoderSpec, config: EncoderConfig | None = None) -> None:
        self.spec = spec
        self.config = config or EncoderConfig()

    @abstractmethod
    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        """Vectors of at most ``config.batch_size`` images, [n, D]."""

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        """Pooled vectors of ``images`` (RGB PIL), float32 [N, D], in input order, in batches."""
        images = list(images)
        if not images:
            raise ConfigError("no images to embed")
        bs = self.config.batch_size
        parts = [self._embed_batch(images[i : i + bs]) for i in range(0, len(images), bs)]
        out = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)
        if out.shape[0] != len(images) or out.ndim != 2:
            raise UnsupportedError(f"{self.spec.spec}: got vectors of shape {out.shape} for {len(images)} images")
        if not np.all(np.isfinite(out)):
            raise UnsupportedError(f"{self.spec.spec}: the encoder produced non-finite features")
        return out

    def describe(self) -> dict[str, Any]:
        return {**self.spec.to_dict(), "device": str(getattr(self, "device", self.config.device))}


# --------------------------------------------------------------------------- torch helpers


def _torch_transformers() -> tuple[Any, Any]:
    torch = require("torch", "hf", "image encoders")
    transformers = require("transformers", "hf", "image encoders")
    return torch, transformers





def _pass_folder(kind: str, folder: str) -> str:
    """How to give an encoder folder instead of a hub id, in the words of the interface in use."""
    from lmmiqa.errors import spell

    return spell(cli=f"--encoder {kind}:{folder}", python=f"the folder as the model ({kind}:{folder})")


def _load_hint(model: str, err: BaseException, kind: str = "clip") -> str:
    from lmmiqa.errors import download_hint

    if os.path.isdir(model):
        return f"cannot load the encoder from the local folder {model!r}: {type(err).__name__}: {err}"
    folder = "./" + model.rstrip("/").rsplit("/", 1)[-1]
    return (
        f"cannot load encoder model {model!r} ({type(err).__name__}: {err}). If this machine is offline, download "
        f"it on a connected machine (`{download_hint(model, folder)}`) and give {_pass_folder(kind, folder)}."
    )


def _features(out: Any) -> Any:
    """The pooled/projected features of a ``get_image_features`` result (a tensor in transformers 4.x, a
    ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds them in 5.x)."""
    if hasattr(out, "pooler_output") and out.pooler_output is not None:
        return out.pooler_output
    if isinstance(out, (list, tuple)) and out and not hasattr(out[0], "shape"):
        return out[0]
    return out


# --------------------------------------------------------------------------- CLIP / SigLIP / DINOv2


class HFImageEncoder(Encoder):
    """A transformers image model with its own image processor (CLIP, SigLIP, DINOv2).

    Subclasses set :attr:`model_class` (a transformers class name).
    """

    model_class: ClassVar[str] = "AutoModel"

    def __init__(self, spec: EncoderSpec, config: EncoderConfig | None = None) -> None:
        super().__init__(spec, config)
        _, transformers = _torch_transformers()
        self._lock = threading.Lock()
        self.device = pick_device(self.config.device)
        self.dtype = pick_dtype(self.config.dtype, self.device)
        from lmmiqa.hub import resolve_local_only

        folder = "./" + spec.model.rstrip("/").rsplit("/", 1)[-1]
        local_only = resolve_local_only(  # offline and not cached / hub unreachable: fail now, not after retries
            spec.model, self.config.local_files_only, what="encoder model", folder=folder,
            pass_as=_pass_folder(spec.kind, folder),
        )
        common = {"local_files_only": local_only}
        try:
            self.processor = transformers.AutoImageProcessor.from_pretrained(spec.model, **common)
            cls = getattr(transformers, self.model_class)
            extra = {"adapter_kwargs": {"local_files_only": True}} if local_only and self.model_class.startswith("Auto") else {}
            self.model = cls.from_pretrained(spec.model, dtype=self.dtype, **common, **extra)
        except Exception as err:
            raise ModelLoadError(_load_hint(spec.model, err, spec.kind)) from err
        self.model.to(self.device)
        self.model.eval()

    def _pixel_values(self, images: Sequence[Any]) -> Any:
        inputs = self.processor(images=list(images), return_tensors="pt")
        return inputs["pixel_values"].to(self.device, self.dtype)

    def _forward(self, pixel_values: Any) -> Any:
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            feats = self._forward(self._pixel_values(images))
        return feats.float().cpu().numpy()


class CLIPEncoder(HFImageEncoder):
    """``clip:MODEL`` — ``CLIPModel.get_image_features``: the projected image embedding."""

    name = "clip"
    model_class = "CLIPModel"


class SiglipEncoder(HFImageEncoder):
    """``siglip:MODEL`` — ``SiglipModel.get_image_features``: the pooled (attention-pooling head) embedding."""

    name = "siglip"
    model_class = "SiglipModel"


class Dinov2Encoder(HFImageEncoder):
    """``dinov2:MODEL`` — ``Dinov2Model``: the layer-normed CLS token (``cls``) or the mean patch token (``mean``)."""

    name = "dinov2"
    model_class = "AutoModel"

    def _forward(self, pixel_values: Any) -> Any:
        out = self.model(pixel_values=pixel_values)
        if self.spec.pooling == "cls":
            return out.pooler_output if getattr(out, "pooler_output", None) is not None else out.last_hidden_state[:, 0]
        return out.last_hidden_state[:, 1:].mean(dim=1)


# --------------------------------------------------------------------------- the MLLM's own vision tower


def split_per_image(features: Any, n_images: int, inputs: dict[str, Any], merge_size: int | None = None) -> list[Any]:
    """Split ``get_image_features`` output into one token tensor per image.

    Handles the layouts transformers' VLMs return: a list/tuple with one tensor per image (Qwen2.5-VL, Qwen3-VL,
    LLaVA-OneVision in 5.x); a tensor whose first axis is the image (one tile per image); a tensor of tiles with
    ``num_patches`` tiles per image (InternVL); a flat token tensor with ``image_grid_thw`` (Qwen in 4.x).

    Raises:
        UnsupportedError: the layout is not one of these.
    """
    if isinstance(features, (list, tuple)):
        if len(features) == n_images:
            return list(features)
        raise UnsupportedError(f"get_image_features returned {len(features)} feature tensors for {n_images} images")
    shape = tuple(features.shape)
    num_patches = inputs.get("num_patches")
    if num_patches is not None:
        sizes = [int(x) for x in num_patches.reshape(-1).tolist()]
        if len(sizes) == n_images and sum(sizes) == shape[0]:
            return list(features.split(sizes, dim=0))
    grid = inputs.get("image_grid_thw")
    if grid is not None and merge_size and len(shape) == 2:
        sizes = [int(x) // (merge_size * merge_size) for x in grid.prod(dim=-1).tolist()]
        if len(sizes) == n_images and sum(sizes) == shape[0]:
            return list(features.split(sizes, dim=0))
    if shape and shape[0] == n_images:
        return list(features)
    raise UnsupportedError(
        f"cannot tell which image features (shape {shape}) belong to which of the {n_images} images; "
        "use a clip:, siglip: or dinov2: encoder for this model"
    )


class VisionTowerEncoder(Encoder):
    """``vision-tower`` — the VLM's own vision encoder (after its projector), mean-pooled per image.

    Args:
        spec: ``EncoderSpec("vision-tower", model)``.
        config: runtime options (``device``/``dtype`` are used when the backend is created here).
        backend: an already loaded :class:`~lmmiqa.backends.transformers_local.TransformersBackend` of the same
            model (the IQARAG scorer passes its own); created (and shared through the backend cache) otherwise.
    """

    name = "vision-tower"

    def __init__(self, spec: EncoderSpec, config: EncoderConfig | None = None, backend: Any | None = None) -> None:
        super().__init__(spec, config)
        if backend is None:
            from lmmiqa.backends.base import create_backend

            opts: dict[str, Any] = {"device": self.config.device, "dtype": self.config.dtype}
            if self.config.local_files_only is not None:
                opts["local_files_only"] = self.config.local_files_only
            backend = create_backend("transformers", spec.model, **opts)
        model = getattr(backend, "model", None)
        if model is None or not hasattr(backend, "processor"):
            raise UnsupportedError(
                f"the vision-tower encoder needs an in-process transformers model; the {backend.name} backend has none"
            )
        if not hasattr(model, "get_image_features"):
            raise UnsupportedError(
                f"{spec.model} ({type(model).__name__}) has no get_image_features; use a clip:, siglip: or dinov2: "
                "encoder"
            )
        self.backend = backend
        self.model = model
        self.device = backend.device
        self.dtype = backend.dtype
        self.image_processor = getattr(backend.processor, "image_processor", None)
        if self.image_processor is None:
            raise UnsupportedError(f"the processor of {spec.model} has no image_processor")
        self._accepted = set(inspect.signature(model.get_image_features).parameters)
        self._merge = getattr(self.image_processor, "merge_size", None)
        self._lock = getattr(backend, "_lock", None) or threading.Lock()

    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        import torch

        inputs = dict(self.image_processor(images=list(images), return_tensors="pt"))
        kwargs: dict[str, Any] = {}
        for key, value in inputs.items():
            if key not in self._accepted or not hasattr(value, "to"):
                continue
            value = value.to(self.device)
            if value.is_floating_point():
                value = value.to(self.dtype)
            kwargs[key] = value
        with self._lock, torch.inference_mode():
            out = self.model.get_image_features(**kwargs)
        per_image = split_per_image(_features(out), len(images), inputs, self._merge)
        rows = [t.float().reshape(-1, t.shape[-1]).mean(dim=0) for t in per_image]
        return torch.stack(rows).cpu().numpy()


# --------------------------------------------------------------------------- construction


def create_encoder(
    spec: str | EncoderSpec,
    *,
    model: str | None = None,
    pooling: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 16,
    local_files_only: bool | None = None,
    backend: Any | None = None,
) -> Encoder:
    """An encoder from a spec (``vision-tower``, ``clip:MODEL``, ``siglip:MODEL``, ``dinov2:MODEL``).

    Args:
        spec: a spec string or :class:`EncoderSpec`.
        model: the model when the spec has none (``vision-tower`` with ``--model``).
        pooling: override the kind's default pooling (``cls``/``mean`` for dinov2).
        device, dtype, batch_size, local_files_only: see :class:`EncoderConfig`.
        backend: for ``vision-tower``: reuse this loaded transformers backend (same model).

    Raises:
        UnknownNameError: unknown encoder kind (lists the valid ones). ConfigError: bad options.
        ModelLoadError: the weights cannot be loaded. MissingDependencyError: torch/transformers missing.
    """
    from lmmiqa import registry

    es = spec if isinstance(spec, EncoderSpec) else EncoderSpec.parse(spec, model=model, pooling=pooling)
    cfg = EncoderConfig(device=device, dtype=dtype, batch_size=batch_size, local_files_only=local_files_only)
    cls = registry.resolve("encoder", es.kind)
    if backend is not None:
        if es.kind != "vision-tower":
            raise ConfigError(f"a backend can only be reused by the vision-tower encoder, not {es.kind!r}")
        return cls(es, cfg, backend=backend)
    return cls(es, cfg)
