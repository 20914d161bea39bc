"""The scoring core end to end on tiny random-weight VLMs of every supported architecture."""

from __future__ import annotations

import numpy as np
import pytest

import lmmiqa
from lmmiqa.testing import TINY_ARCHS, force_token, make_image

pytest.importorskip("torch")
pytest.importorskip("transformers")


def _images():
    return [make_image(64, 48, 0), make_image(40, 72, 1), make_image(96, 96, 2), make_image(120, 56, 3)]


@pytest.fixture(params=TINY_ARCHS)
def arch_model(request, tiny_model_path):
    return request.param, str(tiny_model_path(request.param))


@pytest.mark.parametrize("method,options,scale", [
    ("q-align", {}, (1, 5)),
    ("standard-guided", {"levels": 7}, (1, 7)),
])
def test_scores_in_range_and_probabilities_sum_to_one(arch_model, method, options, scale):
    _, model = arch_model
    scorer = lmmiqa.create_scorer(method, model=model, device="cpu", **options)
    results = scorer.score(_images(), batch_size=4)
    assert len(results) == 4
    for i, r in enumerate(results):
        assert r.ok, r.error
        assert r.image == f"<memory:{i}>"
        assert scale[0] <= r.score <= scale[1]
        assert r.scale == scale
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-9)
        assert list(r.probabilities) == [str(k) for k in range(scale[0], scale[1] + 1)]
        assert 0.0 < r.details["covered_mass"] <= 1.0
        assert r.details["std"] >= 0
        assert r.method == method and r.model == model and r.higher_is_better


def test_forced_level_logit_makes_score_exactly_that_level(arch_model):
    _, model = arch_model
    scorer = lmmiqa.create_scorer("q-align", model=model, device="cpu")
    backend = scorer.backend
    for word, value in (("excellent", 5.0), ("poor", 2.0)):
        (tid,) = backend.token_ids([" " + word], "The quality of the image is")
        with force_token(backend.model, tid):
            results = scorer.score(_images()[:2])
        for r in results:
            assert r.score == pytest.approx(value, abs=1e-6)
            assert r.details["argmax"] == value
    sg = lmmiqa.create_scorer("standard-guided", model=model, device="cpu", levels=5, readout="argmax")
    (tid,) = sg.backend.token_ids(["4"], "")
    with force_token(sg.backend.model, tid):
        assert [r.score for r in sg.score(_images()[:2])] == [4.0, 4.0]


def test_mixed_size_batch_equals_one_at_a_time(arch_model):
    _, model = arch_model
    scorer = lmmiqa.create_scorer("q-align", model=model, device="cpu")
    imgs = _images()
    batched = scorer.score(imgs, batch_size=4)
    single = [scorer.score([im], batch_size=1)[0] for im in imgs]
    for b, s in zip(batched, single):
        assert b.score == pytest.approx(s.score, abs=1e-5)
        for k in b.probabilities:
            assert b.probabilities[k] == pytest.approx(s.probabilities[k], abs=1e-5)


def test_bad_inputs_do_not_sink_the_batch(tmp_path, tiny_model_path):
    model = str(tiny_model_path("qwen2_5_vl"))
    good = tmp_path / "good.png"
    make_image(50, 40, 0).save(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 3])
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    from PIL import Image

    Image.new("L", (9000, 9000)).save(tmp_path / "huge.png")
    scorer = lmmiqa.create_scorer("q-align", model=model, device="cpu", max_image_pixels=50_000_000)
    inputs = [str(good), str(tmp_path / "empty.png"), str(tmp_path / "text.jpg"), str(tmp_path / "trunc.png"),
              str(tmp_path / "corrupt.png"), str(tmp_path / "huge.png"), str(tmp_path / "missing.png"), str(good)]
    results = scorer.score(inputs, batch_size=8)
    assert [r.image for r in results] == inputs
    assert [r.ok for r in results] == [True, False, False, False, False, False, False, True]
    for r in results[1:-1]:
        assert r.score is None and r.error
    assert results[0].score == pytest.approx(results[-1].score)
    alone = scorer.score([str(good)])[0]
    assert alone.score == pytest.approx(results[0].score, abs=1e-5)


def test_backend_exposes_model_processor_tokenizer(tiny_model_path):
    scorer = lmmiqa.create_scorer("q-align", model=str(tiny_model_path("qwen2_5_vl")), device="cpu")
    b = scorer.backend
    assert b.model is not None and b.processor is not None and b.tokenizer is not None
    assert b.tokenizer.padding_side == "left"
    hs = b.hidden_states([scorer.build_prompt(make_image(32, 32, 0))])
    assert hs.shape[0] == 1 and hs.shape[1] == b.model.config.get_text_config().hidden_size
    text = b.generate([scorer.build_prompt(make_image(32, 32, 0))], max_new_tokens=3)
    assert isinstance(text[0], str)


def test_candidate_that_is_not_one_token_fails_loudly(tiny_model_path):
    from lmmiqa.errors import TokenizationError

    scorer = lmmiqa.create_scorer("q-align", model=str(tiny_model_path("qwen2_5_vl")), device="cpu")
    with pytest.raises(TokenizationError, match="exactly one token"):
        scorer.backend.token_ids([" supercalifragilistic"], "The quality of the image is")


def test_missing_model_gives_actionable_error(tmp_path):
    from lmmiqa.errors import ModelLoadError

    scorer = lmmiqa.create_scorer("q-align", model="no-such-org/no-such-model", device="cpu")
    with pytest.raises(ModelLoadError, match="local folder|--model /path"):
        _ = scorer.backend
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="empty_model"):
        _ = lmmiqa.create_scorer("q-align", model=str(empty), device="cpu").backend


def test_pad_to_square_option_changes_input(tiny_model_path):
    model = str(tiny_model_path("qwen2_5_vl"))
    plain = lmmiqa.create_scorer("q-align", model=model, device="cpu")
    padded = lmmiqa.create_scorer("q-align", model=model, device="cpu", pad_to_square=True)
    img = make_image(80, 40, 5)
    assert padded.build_prompt(img).images[0].size == (80, 80)
    assert plain.build_prompt(img).images[0].size == (80, 40)
    r = padded.score([img])[0]
    assert r.ok and 1 <= r.score <= 5


def test_level_logprobs_shape_and_full_vocab_normalisation(tiny_model_path):
    scorer = lmmiqa.create_scorer("q-align", model=str(tiny_model_path("qwen2_5_vl")), device="cpu")
    prompts = [scorer.build_prompt(im) for im in _images()[:3]]
    lp = scorer.backend.level_logprobs(prompts, [" bad", " poor", " fair", " good", " excellent"])
    assert lp.shape == (3, 5) and np.all(lp < 0)


def test_multi_image_prompts_batch_like_single(arch_model):
    from lmmiqa.types import Prompt

    _, model = arch_model
    scorer = lmmiqa.create_scorer("q-align", model=model, device="cpu")
    a, b, c = make_image(48, 40, 1), make_image(64, 32, 2), make_image(40, 40, 3)
    two = Prompt.simple([a, "This image's quality is good.", b, "How would you rate the quality of this image?"],
                        answer_prefix="The quality of this image is")
    one = Prompt.simple([c, "How would you rate the quality of this image?"], answer_prefix="The quality of this image is")
    cands = [" bad", " poor", " fair", " good", " excellent"]
    batched = scorer.backend.level_logprobs([two, one], cands)
    single = np.vstack([scorer.backend.level_logprobs([p], cands) for p in (two, one)])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_backend_from_loaded_model_scores_like_from_path(tiny_model_path):
    from lmmiqa.backends.transformers_local import TransformersBackend
    from lmmiqa.methods.q_align import QAlign, QAlignConfig

    path = str(tiny_model_path("qwen2_5_vl"))
    by_path = lmmiqa.create_scorer("q-align", model=path, device="cpu")
    wrapped = TransformersBackend.from_loaded(by_path.backend.model, by_path.backend.processor, model_id="mine")
    scorer = QAlign(QAlignConfig(model="mine"), backend=wrapped)
    img = make_image(48, 48, 7)
    assert scorer.score([img])[0].score == pytest.approx(by_path.score([img])[0].score, abs=1e-9)


def test_offline_adapter_lookup_option_only_where_transformers_needs_it():
    """transformers 5 looks for a PEFT adapter without local_files_only unless told in adapter_kwargs; 4.57 passes
    it on itself and raises 'got multiple values for local_files_only' when told twice (seen in a 4.57.6 venv)."""
    from lmmiqa.backends.transformers_local import _adapter_lookup_ignores_local_only

    assert _adapter_lookup_ignores_local_only("5.25.0") and _adapter_lookup_ignores_local_only("6.0.0.dev0")
    assert not _adapter_lookup_ignores_local_only("4.57.6")
