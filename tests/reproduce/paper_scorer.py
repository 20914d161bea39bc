"""A model-free scorer with a ``paper`` preset and published rows, for the ``lmmiqa reproduce`` tests.

The score is a real image statistic (gradient energy of the grey image: sharper is higher) raised to
``exponent``: the preset changes the option, the ranking (SRCC) stays. Importable as
``paper_scorer:SharpPaperScorer`` when ``tests/reproduce`` is on ``sys.path`` (its conftest puts it there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmmiqa.methods.base import Scorer, ScorerConfig
from lmmiqa.presets import Preset, PresetValue
from lmmiqa.reproduce.published import Protocol, Published
from lmmiqa.types import ScoreResult


@dataclass
class SharpPaperConfig(ScorerConfig):
    exponent: float = 1.0


PAPER = Preset(
    name="paper", target="sharp-paper", summary="the test paper's exponent", reference="A. Tester, 2026",
    values={"exponent": PresetValue(2.0, "the test paper §2")},
)

_OFFICIAL = Protocol("official-test", source="METHODS §7")
_FULL = Protocol("full", source="lmmiqa decision: whole dataset")
_SPLITS = Protocol("random-80-20", 3, source="the test paper: 3 random 80/20 splits, median")


class SharpPaperScorer(Scorer):
    """Sharpness to the power ``exponent`` (a cheap scorer whose ranking follows blur)."""

    name = "sharp-paper"
    config_cls = SharpPaperConfig
    presets = {"paper": PAPER}
    published = (
        Published("sharp-paper", ("koniq10k",), "the test paper's model", "the test paper, Table 1", _OFFICIAL,
                  srcc=0.5, plcc=0.5),
        Published("sharp-paper", ("kadid10k",), "the test paper's model", "the test paper, Table 1", _FULL,
                  srcc=0.99, plcc=0.2),
        Published("sharp-paper", ("spaq",), "the test paper's model", "the test paper, Table 2", _SPLITS,
                  srcc=0.8, plcc=0.8),
        Published("sharp-paper", ("kadid10k", "spaq"), "the test paper's model", "the test paper, Table 3", _FULL,
                  mean=0.8),
        Published("sharp-paper", ("livec",), "a model that is not public", "the test paper, Table 1", _FULL,
                  srcc=0.9, plcc=0.9, runnable=False, why_not="the model is not public"),
    )

    def score_items(self, items):
        out = []
        for it in items:
            g = np.asarray(it.image.convert("L"), dtype=np.float64) / 255.0
            energy = float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())
            out.append(ScoreResult(image=it.key, score=(energy * 10.0) ** float(self.config.exponent),
                                   method=self.name, details={"exponent": self.config.exponent}))
        return out


class NoPresetScorer(SharpPaperScorer):
    """The same scorer without a preset (reproduce must refuse its paper settings)."""

    name = "no-preset"
    presets = {}
    published = SharpPaperScorer.published
