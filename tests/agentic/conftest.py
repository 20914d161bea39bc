"""Fixtures for the AgenticIQA tests: an isolated user cache (no refitted tool maps), no downloads, and the
official NIQE/BRISQUE parameter files from ``../shared/data/params`` when present."""

from __future__ import annotations

import pathlib

import pytest


@pytest.fixture(autouse=True)
def tool_env(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tools use their shipped maps (empty user cache), never download, and find the shared parameter files."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("LMMIQA_OFFLINE", "1")
    params = (pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "params").resolve()
    if (params / "niqe_pris_params.npz").is_file():
        monkeypatch.setenv("LMMIQA_ASSETS", str(params))
    else:
        monkeypatch.delenv("LMMIQA_ASSETS", raising=False)


@pytest.fixture()
def assets(shared_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """``$LMMIQA_ASSETS`` = ``<shared_dir>/data/params`` (skips when the parameter files are absent)."""
    path = shared_dir / "data" / "params"
    if not (path / "niqe_pris_params.npz").is_file():
        pytest.skip(f"official parameter files not found in {path}")
    monkeypatch.setenv("LMMIQA_ASSETS", str(path))
    return path
