"""Fixtures for the AgenticIQA tests: an isolated user cache (no refitted tool maps), no downloads, and
``$LMMIQA_ASSETS`` = ``<shared_dir>/data/params`` (the official NIQE/BRISQUE parameter files) when present.

No test depends on those files: without them NIQE/BRISQUE report an error in ``details.tools`` and the agent
goes on with the other evidence."""

from __future__ import annotations

import pathlib

import pytest


@pytest.fixture(autouse=True)
def tool_env(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tools use their shipped maps (empty user cache) and the shared parameter files when present (the package
    ships the same files)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    params = (pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "params").resolve()
    if (params / "niqe_pris_params.npz").is_file():
        monkeypatch.setenv("LMMIQA_ASSETS", str(params))
    else:
        monkeypatch.delenv("LMMIQA_ASSETS", raising=False)

