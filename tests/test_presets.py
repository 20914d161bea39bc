"""Presets (lmmiqa.presets): named option sets with sources, applied under explicit options and recorded."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import lmmiqa
from lmmiqa.errors import ConfigError, UnknownNameError
from lmmiqa.methods.base import Scorer, ScorerConfig
from lmmiqa.presets import Preset, PresetValue, apply_preset, get_preset
from lmmiqa.types import ScoreResult


@dataclass
class _Cfg(ScorerConfig):
    offset: float = 0.0
    label: str = "default"


PAPER = Preset(
    name="paper",
    target="constant",
    summary="the paper's constant",
    reference="A. Author, A Paper, 2024",
    values={"offset": PresetValue(2.5, "paper §3"), "label": PresetValue("paper", "lmmiqa decision: the paper is silent")},
    notes=("nothing is missing",),
)


class Constant(Scorer):
    """Scores every image with ``offset`` (a scorer with a preset, for these tests)."""

    name = "constant"
    config_cls = _Cfg
    presets = {"paper": PAPER}

    def score_items(self, items):
        return [ScoreResult(image=it.key, score=self.config.offset, method=self.name, details={"label": self.config.label})
                for it in items]


def test_preset_values_need_sources():
    with pytest.raises(ConfigError, match="source"):
        PresetValue(1, " ")
    assert PAPER.values["label"].is_decision and not PAPER.values["offset"].is_decision
    assert PAPER.to_dict()["values"]["offset"] == {"value": 2.5, "source": "paper §3"}


def test_apply_preset_explicit_options_win():
    presets = {"paper": PAPER}
    assert apply_preset(presets, None, {"offset": 1.0, "label": None}, "t") == {"offset": 1.0}
    assert apply_preset(presets, "paper", {}, "t") == {"offset": 2.5, "label": "paper"}
    assert apply_preset(presets, "PAPER", {"offset": 1.0, "label": None}, "t") == {"offset": 1.0, "label": "paper"}


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="known: paper"):
        get_preset({"paper": PAPER}, "papr", "method 'constant'")
    with pytest.raises(ConfigError, match="has no presets"):
        get_preset({}, "paper", "method 'niqe'")


def test_scorer_records_its_preset(sample_images):
    scorer = Constant.from_options(preset="paper")
    assert scorer.preset == "paper" and scorer.config.offset == 2.5
    assert scorer.describe()["preset"] == "paper"
    results = scorer.score([str(p) for p in sample_images] + ["/no/such/image.png"])
    assert [r.score for r in results[:-1]] == [2.5] * len(sample_images)
    assert all(r.details["preset"] == "paper" for r in results)  # failures too
    assert results[-1].error
    # an explicit option overrides the preset's value; the preset is still recorded
    mixed = Constant.from_options(preset="paper", offset=1.0)
    assert mixed.config.offset == 1.0 and mixed.config.label == "paper" and mixed.preset == "paper"
    plain = Constant.from_options()
    assert plain.preset is None and plain.describe()["preset"] is None
    assert "preset" not in plain.score(str(sample_images[0]))[0].details


def test_create_scorer_and_registered_methods_take_preset():
    with pytest.raises(ConfigError, match="method 'niqe' has no presets"):
        lmmiqa.create_scorer("niqe", preset="paper")
    assert lmmiqa.create_scorer("niqe").preset is None


def test_ray_spec_applies_the_preset():
    from lmmiqa.distributed import scorer_spec

    cls, cfg = scorer_spec(f"{__name__}:Constant", {"preset": "paper", "offset": None})
    assert cls is Constant and cfg.offset == 2.5 and cfg.preset == "paper"
