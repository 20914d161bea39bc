"""Fixtures for the tool tests: an isolated user cache, the official parameter files and the shared images."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Every tool test gets an empty user cache (no refitted maps) and no ``$LMMIQA_ASSETS`` override, so the
    NIQE/BRISQUE tests run on the parameter files shipped inside the package."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("LMMIQA_ASSETS", raising=False)
    return cache / "lmmiqa"


@pytest.fixture()
def params_dir(shared_dir: pathlib.Path) -> pathlib.Path:
    """``../shared/data/params``: the official parameter files the package ships a copy of."""
    path = shared_dir / "data" / "params"
    if not (path / "niqe_pris_params.npz").is_file():
        pytest.skip(f"official parameter files not found in {path}")
    return path


@pytest.fixture()
def images_dir(shared_dir: pathlib.Path) -> pathlib.Path:
    """``../shared/data/images`` (rated/ and calibration/)."""
    path = shared_dir / "data" / "images"
    if not path.is_dir():
        pytest.skip(f"shared images not found in {path}")
    return path


def _natural_rgb(seed: int = 0, h: int = 192, w: int = 256) -> np.ndarray:
    """A deterministic photo-like RGB image (smooth shapes plus fine texture), uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 60)
        color = rng.uniform(0, 255, size=3)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        img[mask] = 0.5 * img[mask] + 0.5 * color
    img += 20 * np.sin(xx / 3.0)[..., None] * np.cos(yy / 5.0)[..., None]
    img += rng.normal(0, 3, size=img.shape)
    return np.clip(np.rint(img + 60), 0, 255).astype(np.uint8)


@pytest.fixture()
def make_rgb() -> Callable[..., np.ndarray]:
    """Factory ``make_rgb(seed=0, h=192, w=256)`` of deterministic photo-like uint8 RGB arrays."""
    return _natural_rgb
