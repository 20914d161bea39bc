"""Offline test kit for retrieval: tiny random-weight CLIP, SigLIP and DINOv2 encoders built from configs.

:func:`make_tiny_encoder` saves a model and its image processor with ``save_pretrained``, so the folder loads
with ``from_pretrained`` exactly like a real checkpoint (``clip:<folder>``, ``siglip:<folder>``,
``dinov2:<folder>``). :class:`PixelEncoder` is a weight-free, deterministic stand-in encoder for tests of
banks and retrieval that need no model at all. Nothing is downloaded. Requires the ``hf`` extra; torch and transformers are imported
lazily.

Example::

    from lmmiqa.retrieval.testing import make_tiny_encoder
    from lmmiqa.retrieval import create_encoder

    path = make_tiny_encoder("clip", tmp_path / "clip")
    vectors = create_encoder(f"clip:{path}", device="cpu").embed(images)
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError, UnknownNameError, require
from lmmiqa.retrieval.encoders import Encoder, EncoderConfig, EncoderSpec

#: encoder kinds :func:`make_tiny_encoder` can build
TINY_ENCODERS: tuple[str, ...] = ("clip", "siglip", "dinov2")

_IMAGE = 32
_PATCH = 8
_VISION = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": _IMAGE,
    "patch_size": _PATCH,
}
_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "vocab_size": 99,
    "max_position_embeddings": 16,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}


def _processor(transformers: Any, kind: str) -> Any:
    if kind == "clip":
        cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        return cls(size={"shortest_edge": _IMAGE}, crop_size={"height": _IMAGE, "width": _IMAGE})
    if kind == "siglip":
        cls = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
        return cls(size={"height": _IMAGE, "width": _IMAGE})
    cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
    return cls(
        size={"shortest_edge": _IMAGE},
        crop_size={"height": _IMAGE, "width": _IMAGE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def make_tiny_encoder(kind: str, path: str | os.PathLike[str], *, seed: int = 0) -> pathlib.Path:
    """Build a tiny random-weight image encoder of a real architecture and save it with its image processor.

    Args:
        kind: ``clip`` (``CLIPModel``, projection dim 24), ``siglip`` (``SiglipModel``, dim 32) or ``dinov2``
            (``Dinov2Model``, dim 32); 32x32 inputs, 8x8 patches, 2 layers.
        path: output folder (created).
        seed: torch seed for the weights.

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    if kind not in TINY_ENCODERS:
        raise UnknownNameError("tiny encoder", kind, TINY_ENCODERS)
    torch = require("torch", "hf", "building tiny test encoders")
    transformers = require("transformers", "hf", "building tiny test encoders")
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "clip":
        config = transformers.CLIPConfig(text_config=dict(_TEXT), vision_config=dict(_VISION), projection_dim=24)
        model_cls = transformers.CLIPModel
    elif kind == "siglip":
        config = transformers.SiglipConfig(text_config=dict(_TEXT), vision_config=dict(_VISION))
        model_cls = transformers.SiglipModel
    else:
        config = transformers.Dinov2Config(**_VISION)
        model_cls = transformers.Dinov2Model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    _processor(transformers, kind).save_pretrained(out)
    return out


class PixelEncoder(Encoder):
    """A weight-free test encoder: each image becomes its RGB pixels averaged over a ``grid`` × ``grid`` raster.

    Deterministic and fast, so bank building, resumption and retrieval can be tested without torch. Its spec
    pretends to be ``dinov2:<model>`` (a registered kind), so banks built with it load normally; a scorer must be
    given the instance itself (``IQARAG(..., encoder=PixelEncoder())``), since no such model exists on disk.

    Args:
        grid: raster side; vectors have ``3 · grid²`` dimensions.
        model: the model name written into the spec (default ``test-pixels-<grid>``).
        batch_size: images per :meth:`_embed_batch` call.
        fail_after: raise ``RuntimeError`` on the call after this many batches (simulates a crash mid-build).
    """

    name = "pixels"

    def __init__(
        self, grid: int = 2, model: str | None = None, batch_size: int = 4, fail_after: int | None = None
    ) -> None:
        if int(grid) < 1:
            raise ConfigError(f"grid must be >= 1, got {grid}")
        spec = EncoderSpec("dinov2", model or f"test-pixels-{int(grid)}")
        super().__init__(spec, EncoderConfig(device="cpu", batch_size=batch_size))
        self.grid = int(grid)
        self.fail_after = fail_after
        self.calls = 0
        self.images_seen = 0

    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        from PIL import Image

        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError(f"PixelEncoder: simulated failure after {self.fail_after} batch(es)")
        self.calls += 1
        self.images_seen += len(images)
        rows = [
            np.asarray(im.convert("RGB").resize((self.grid, self.grid), Image.BOX), dtype=np.float32).reshape(-1) / 255.0
            for im in images
        ]
        return np.stack(rows)
