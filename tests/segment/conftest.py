"""Fixtures for segmentation tests: a tiny random-weight SAM 2 saved to a temporary folder (no download)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_sam2_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lmmiqa.segment.testing import make_tiny_sam2

    return make_tiny_sam2(tmp_path_factory.mktemp("tiny-sam2") / "model", image_size=64)
