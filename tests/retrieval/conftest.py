"""Fixtures of the retrieval tests: tiny random-weight CLIP/SigLIP/DINOv2 encoders, built once per session."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest


@pytest.fixture(scope="session")
def tiny_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], pathlib.Path]:
    """Factory ``tiny_encoder_path(kind) -> Path`` (``clip``, ``siglip``, ``dinov2``); read-only, shared."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lmmiqa.retrieval.testing import make_tiny_encoder

    root = tmp_path_factory.mktemp("tiny_encoders")
    built: dict[str, pathlib.Path] = {}

    def factory(kind: str) -> pathlib.Path:
        if kind not in built:
            built[kind] = make_tiny_encoder(kind, root / kind)
        return built[kind]

    return factory
