"""LLM-IQA's ``paper`` preset (values and sources) and the greedy-token report of the ``argmax`` readout."""

from __future__ import annotations

import pytest

import lmmiqa
from lmmiqa.methods.llm_iqa import LLMIQA, PAPER_MODEL, PAPER_PRESET, LLMIQAConfig
from lmmiqa.testing import force_token, make_image


def test_paper_preset_values_have_sources_and_build_a_config():
    preset = LLMIQA.presets["paper"]
    assert preset is PAPER_PRESET and preset.target == "llm-iqa"
    opts = preset.options()
    assert opts["model"] == PAPER_MODEL == "mPLUG/mPLUG-Owl3-7B-240728"
    assert opts["levels"] == 7 and opts["readout"] == "argmax" and opts["segmenter"] == "sam2"
    assert opts["min_area"] == 0.01 and opts["lam"] == 1.0 and opts["min_crop_side"] == 0
    decisions = {k for k, v in preset.values.items() if v.is_decision}
    assert decisions == {"segmenter_options", "min_area", "lam"}  # where the paper is silent
    assert all(v.source.strip() for v in preset.values.values())
    assert any("ensemble" in n.lower() for n in preset.notes) and any("complement" in n.lower() for n in preset.notes)
    cfg = LLMIQAConfig(**opts)  # every preset value is a valid option
    assert cfg.model_list == [PAPER_MODEL]
    scorer = lmmiqa.create_scorer("dog-iqa", preset="paper", model="/some/owl3")
    assert scorer.preset == "paper" and scorer.config.model == "/some/owl3" and scorer.config.readout == "argmax"
    assert scorer.describe()["preset"] == "paper"
    ensemble = lmmiqa.create_scorer("llm-iqa", preset="paper", models=["a", "b"])
    assert ensemble.config.model_list == ["a", "b"]


@pytest.mark.parametrize(("forced", "is_level"), [("6", True), (" good", False)])
def test_argmax_reports_whether_the_greedy_token_was_a_level(tiny_model_path, forced, is_level):
    pytest.importorskip("torch")
    pytest.importorskip("skimage")
    model = str(tiny_model_path("qwen2_5_vl"))
    scorer = lmmiqa.create_scorer("llm-iqa", model=model, readout="argmax", segmenter="felzenszwalb",
                                  segmenter_options={"max_regions": 3}, device="cpu")
    backend = scorer.members[0].backend
    tid = backend.tokenizer.encode(forced, add_special_tokens=False)
    assert len(tid) == 1
    with force_token(backend.model, tid[0], bias=30.0):
        results = scorer.score([make_image(64, 48, 0), make_image(96, 96, 2)])
    for r in results:
        assert r.ok, r.error
        entry = r.details["models"][0]
        assert entry["greedy_token"] == forced
        assert entry["greedy_is_level"] is is_level and r.details["greedy_is_level"] is is_level
        n_regions = len(r.details["regions"])
        assert entry["regions_greedy_not_level"] == (0 if is_level else n_regions)
        if is_level:
            assert r.score == pytest.approx(6.0)
        else:  # the readout still picks the most probable level
            assert 1.0 <= r.score <= 7.0 and r.details["global"] in range(1, 8)
    # the expected readout does not claim anything about the greedy token
    plain = lmmiqa.create_scorer("llm-iqa", model=model, segmenter="felzenszwalb", device="cpu")
    assert "greedy_is_level" not in plain.score(make_image(64, 48, 0))[0].details
