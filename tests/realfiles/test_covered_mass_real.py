"""The covered-mass warning on a real-file model: a model that wants to write something else ("<think>", or
anything but a level, as random weights do) is named with its top next tokens; a model that answers a level
is not warned about."""

from __future__ import annotations

import warnings

import pytest

import lmmiqa
from lmmiqa.methods.coverage import LowCoveredMassWarning, reset_low_mass_warnings
from lmmiqa.testing import force_token, make_image

pytest.importorskip("torch")
pytest.importorskip("transformers")

NAME = "Qwen3-VL-8B-Instruct"


@pytest.fixture(autouse=True)
def _rearm():
    reset_low_mass_warnings()
    yield
    reset_low_mass_warnings()


def test_a_model_that_wants_to_think_is_named_with_its_top_tokens(real_file_model):
    scorer = lmmiqa.create_scorer("q-align", model=str(real_file_model(NAME)), device="cpu")
    model = scorer.backend.model
    think = scorer.backend.tokenizer.convert_tokens_to_ids("<think>")
    imgs = [make_image(56, 56, seed=1), make_image(64, 56, seed=2)]
    with force_token(model, think), pytest.warns(LowCoveredMassWarning) as rec:
        results = scorer.score(imgs)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert msg.startswith("q-align: the level tokens [' bad', ' poor', ' fair', ' good', ' excellent'] hold only ")
    assert "Its most likely next tokens: '<think>' 1" in msg
    assert all(r.ok and r.details["covered_mass"] < 1e-6 for r in results)  # the scores are still returned
    # the same run does not warn again
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowCoveredMassWarning)
        scorer.score(imgs)


def test_a_model_that_answers_a_level_is_not_warned_about(real_file_model):
    scorer = lmmiqa.create_scorer("q-align", model=str(real_file_model(NAME)), device="cpu")
    with force_token(scorer.backend.model, 1661), warnings.catch_warnings():  # " good"
        warnings.simplefilter("error", LowCoveredMassWarning)
        (r,) = scorer.score([make_image(56, 56)])
    assert r.details["covered_mass"] > 0.99
    # random weights: the levels hold ~5/151936 of the probability -> warned
    with pytest.warns(LowCoveredMassWarning, match="hold only"):
        scorer.score([make_image(56, 56)])
