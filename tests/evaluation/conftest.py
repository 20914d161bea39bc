"""Fixtures for evaluation tests: one small synthetic ladder per session (read-only for tests)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ladder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-reference x 8-type x 5-severity ladder of 32-pixel images (160 items); treat as read-only."""
    from lmmiqa.data.synth import make_ladder

    root = tmp_path_factory.mktemp("ladder")
    make_ladder(root, size=32, max_images=4, seed=0)
    return root
