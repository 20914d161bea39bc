"""LLM-IQA / Dog-IQA end to end on tiny random-weight VLMs, with the Felzenszwalb and a tiny SAM 2 segmenter."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lmmiqa
from lmmiqa.errors import ConfigError, UnknownNameError
from lmmiqa.methods.llm_iqa import LLMIQA, LLMIQAConfig
from lmmiqa.testing import force_token, make_image

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("skimage")

FELZ = {"segmenter": "felzenszwalb", "segmenter_options": {"max_regions": 4}, "device": "cpu"}


def _images():
    return [make_image(64, 48, 0), make_image(96, 96, 2), make_image(120, 56, 3)]


def _count_calls(scorer: LLMIQA) -> list[int]:
    """Wrap each member backend's level_logprobs; returns a list that collects the prompt count per call."""
    calls: list[int] = []
    for member in scorer.members:
        backend = member.backend
        original = backend.level_logprobs

        def wrapped(prompts, candidates, _orig=original):
            calls.append(len(prompts))
            return _orig(prompts, candidates)

        backend.level_logprobs = wrapped  # type: ignore[method-assign]
    return calls


def _unwrap(scorer: LLMIQA) -> None:
    for member in scorer.members:
        member.backend.__dict__.pop("level_logprobs", None)


@pytest.mark.parametrize("readout", ["expected", "argmax"])
def test_forced_level_makes_every_region_and_the_final_score_that_level(tiny_model_path, readout):
    model = str(tiny_model_path("qwen2_5_vl"))
    scorer = lmmiqa.create_scorer("dog-iqa", model=model, levels=7, readout=readout, **FELZ)
    backend = scorer.members[0].backend
    (tid,) = backend.token_ids(["6"], "")
    with force_token(backend.model, tid):
        results = scorer.score(_images(), batch_size=3)
    for r in results:
        assert r.ok, r.error
        assert r.method == "llm-iqa" and r.model == model and r.scale == (1.0, 7.0)
        assert r.score == pytest.approx(6.0, abs=1e-6)
        d = r.details
        assert d["global"] == pytest.approx(6.0, abs=1e-6)
        assert d["local"] == pytest.approx(6.0, abs=1e-6)
        assert 1 <= len(d["regions"]) <= 5  # max_regions=4 (+ a possible complement)
        for reg in d["regions"]:
            assert reg["score"] == pytest.approx(6.0, abs=1e-6)
            assert reg["probabilities"]["6"] == pytest.approx(1.0, abs=1e-6)
            assert set(reg) >= {"bbox", "area", "kind", "crop", "weight", "score", "probabilities"}
        assert sum(reg["weight"] for reg in d["regions"]) == pytest.approx(1.0)
        assert d["argmax"] == 6.0 and d["lambda"] == 1.0 and d["levels"] == 7
        assert r.probabilities["6"] == pytest.approx(1.0, abs=1e-6)
        assert d["prompts"] == 1 + len(d["regions"])
        assert [m["model"] for m in d["models"]] == [model]
        json.dumps(r.to_dict())  # JSON-safe


def test_unforced_scores_mix_global_and_area_weighted_local(tiny_model_path):
    model = str(tiny_model_path("qwen2_5_vl"))
    scorer = lmmiqa.create_scorer("llm-iqa", model=model, lam=3.0, **FELZ)
    for r in scorer.score(_images()):
        d = r.details
        weights = np.array([reg["weight"] for reg in d["regions"]])
        areas = np.array([reg["area"] for reg in d["regions"]], dtype=float)
        assert np.allclose(weights, areas / areas.sum())
        local = float(np.dot(weights, [reg["score"] for reg in d["regions"]]))
        assert d["local"] == pytest.approx(local, abs=1e-9)
        assert r.score == pytest.approx((d["global"] + 3.0 * local) / 4.0, abs=1e-9)
        # expected readout: the mix-grained distribution's expectation is the score
        assert sum(float(k) * p for k, p in r.probabilities.items()) == pytest.approx(r.score, abs=1e-9)
        assert 1.0 <= r.score <= 7.0
    only_global = lmmiqa.create_scorer("llm-iqa", model=model, lam=0.0, **FELZ).score(_images()[:1])[0]
    assert only_global.score == pytest.approx(only_global.details["global"], abs=1e-12)


def test_all_crops_of_a_batch_go_through_one_backend_call(tiny_model_path):
    model = str(tiny_model_path("qwen2_5_vl"))
    scorer = lmmiqa.create_scorer("llm-iqa", model=model, **FELZ)
    calls = _count_calls(scorer)
    try:
        batched = scorer.score(_images(), batch_size=3)
        n_prompts = sum(r.details["prompts"] for r in batched)
        assert calls == [n_prompts]  # 3 global prompts + every region crop of the 3 images, in one call
        calls.clear()
        single = [scorer.score([im], batch_size=1)[0] for im in _images()]
        assert len(calls) == 3
    finally:
        _unwrap(scorer)
    for b, s in zip(batched, single):
        assert b.score == pytest.approx(s.score, abs=1e-5)
        assert [reg["bbox"] for reg in b.details["regions"]] == [reg["bbox"] for reg in s.details["regions"]]


def test_ensemble_of_two_architectures_is_the_mean_of_their_final_scores(tiny_model_path):
    qwen, internvl = str(tiny_model_path("qwen2_5_vl")), str(tiny_model_path("internvl"))
    scorer = lmmiqa.create_scorer("llm-iqa", models=[qwen, internvl], levels=5, **FELZ)
    assert scorer.model_name == [qwen, internvl]
    b0, b1 = (m.backend for m in scorer.members)
    (t0,) = b0.token_ids(["2"], "")
    (t1,) = b1.token_ids(["5"], "")
    with force_token(b0.model, t0), force_token(b1.model, t1):
        results = scorer.score(_images()[:2])
    for r in results:
        assert r.ok, r.error
        assert r.model == [qwen, internvl]
        assert r.score == pytest.approx(3.5, abs=1e-6)
        per_model = {m["model"]: m for m in r.details["models"]}
        assert per_model[qwen]["score"] == pytest.approx(2.0, abs=1e-6)
        assert per_model[internvl]["score"] == pytest.approx(5.0, abs=1e-6)
        assert all(reg["score"] == pytest.approx(3.5, abs=1e-6) for reg in r.details["regions"])
        assert r.details["prompts"] == 2 * (1 + len(r.details["regions"]))
    # unforced: the ensemble score is still the mean of the per-model finals
    for r in scorer.score(_images()[2:]):
        assert r.score == pytest.approx(np.mean([m["score"] for m in r.details["models"]]), abs=1e-12)


def test_tiny_sam2_end_to_end(tiny_model_path, tmp_path_factory):
    from lmmiqa.segment.testing import make_tiny_sam2

    sam = make_tiny_sam2(tmp_path_factory.mktemp("sam2") / "tiny", image_size=64)
    model = str(tiny_model_path("qwen2_5_vl"))
    opts = {"model": sam, "points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    scorer = lmmiqa.create_scorer(
        "llm-iqa", model=model, device="cpu", segmenter="sam2", segmenter_options=opts, keep_masks=True
    )
    results = scorer.score(_images(), batch_size=3)
    for r, img in zip(results, _images()):
        assert r.ok, r.error
        assert 1.0 <= r.score <= 7.0
        assert r.details["segmenter"] == "sam2"
        masks = scorer.region_masks[r.image]
        assert masks.shape == (len(r.details["regions"]), img.height, img.width)
        assert [int(m.sum()) for m in masks] == [reg["area"] for reg in r.details["regions"]]


def test_config_validation_and_names():
    assert lmmiqa.create_scorer("dog-iqa", segmenter="felzenszwalb").name == "llm-iqa"
    assert "llm-iqa" in lmmiqa.list_methods()
    with pytest.raises(ConfigError):
        LLMIQAConfig(lam=-1)
    with pytest.raises(ConfigError):
        LLMIQAConfig(min_area=2.0)
    with pytest.raises(ConfigError):
        LLMIQAConfig(levels=4)
    with pytest.raises(ConfigError):
        LLMIQAConfig(models=[])
    with pytest.raises(ConfigError):
        LLMIQAConfig(models="a,b")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="felzenszwalb"):
        LLMIQAConfig(segmenter="felzenswalb")


def test_cli_explain_image(tmp_path, sample_images, tiny_model_path, capsys):
    from PIL import Image

    from lmmiqa.cli import main

    model = str(tiny_model_path("qwen2_5_vl"))
    common = ["--model", model, "--device", "cpu", "--segmenter", "felzenszwalb", "--format", "jsonl"]
    out_dir = tmp_path / "pictures"
    assert (
        main(
            [
                "score",
                *map(str, sample_images[:2]),
                "--method",
                "dog-iqa",
                *common,
                "--explain-image",
                str(out_dir),
            ]
        )
        == 0
    )
    cap = capsys.readouterr()
    assert "wrote 2 region picture(s)" in cap.err
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.regions.png", "b.regions.png"]
    one = tmp_path / "one.png"
    assert (
        main(["score", str(sample_images[2]), "--method", "llm-iqa", *common, "--explain-image", str(one)])
        == 0
    )
    with Image.open(one) as pic:
        assert pic.format == "PNG" and max(pic.size) >= 768
    capsys.readouterr()
    assert (
        main(
            [
                "score",
                str(sample_images[0]),
                "--method",
                "q-align",
                "--model",
                model,
                "--explain-image",
                str(one),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "score",
                *map(str, sample_images[:2]),
                "--method",
                "llm-iqa",
                *common,
                "--explain-image",
                str(one),
            ]
        )
        == 2
    )
    assert "one input image" in capsys.readouterr().err
