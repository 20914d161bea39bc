"""Fixtures of the LEAF tests: the cue teacher on ``sys.path``, classical-tool parameters, tiny image sets."""

from __future__ import annotations

import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # cue_scorer:SharpnessTeacher for --teacher package.module:Class

from leaf_helpers import write_blur_set  # noqa: E402


@pytest.fixture()
def tool_assets(shared_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Point the classical tools (brisque, niqe) at the shared parameter files (the package ships the same)."""
    params = shared_dir / "data" / "params"
    if not (params / "brisque_svm.npz").is_file():
        pytest.skip(f"classical-tool parameters not found in {params}")
    monkeypatch.setenv("LMMIQA_ASSETS", str(params))
    return params


@pytest.fixture()
def blur_set(tmp_path: pathlib.Path) -> list[pathlib.Path]:
    """12 small PNGs (3 contents x 4 blur levels) under ``tmp_path/images``."""
    return write_blur_set(tmp_path / "images")
