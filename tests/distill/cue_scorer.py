"""Model-free teacher scorers for the LEAF tests: real image statistics, no weights, no parameter files.

Importable as ``cue_scorer:SharpnessTeacher`` (and ``cue_scorer:NoiseTeacher``) when ``tests/distill`` is on
``sys.path`` (the conftest puts it there), so the CLI can name them with ``--teacher package.module:Class``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmmiqa.methods.base import Scorer, ScorerConfig
from lmmiqa.types import ScoreResult


def sharpness(gray: np.ndarray) -> float:
    """Mean absolute Laplacian times the standard deviation (blur and low contrast -> low)."""
    lap = np.abs(4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]).mean()
    return float(lap * gray.std() * 100.0)


@dataclass
class CueConfig(ScorerConfig):
    """``lower_is_better``: report the negated cue with ``higher_is_better=False`` (like NIQE/BRISQUE)."""

    lower_is_better: bool = False


class SharpnessTeacher(Scorer):
    """Sharpness × contrast of the grey image: a crude but real quality cue."""

    name = "test-sharpness"
    config_cls = CueConfig

    def score_items(self, items):
        out = []
        for it in items:
            g = np.asarray(it.image.convert("L"), dtype=np.float64) / 255.0
            s = sharpness(g)
            lower = self.config.lower_is_better
            out.append(ScoreResult(image=it.key, score=-s if lower else s, method=self.name,
                                   higher_is_better=not lower))
        return out
