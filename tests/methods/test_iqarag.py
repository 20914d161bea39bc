"""IQARAG end to end on tiny random-weight VLMs with a bank built from a synthetic ladder (METHODS §2)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import lmmiqa
from lmmiqa.backends.base import Backend
from lmmiqa.data.synth import make_ladder
from lmmiqa.errors import ConfigError, DataError
from lmmiqa.images import open_image
from lmmiqa.methods.iqarag import IQARAG, IQARAGConfig, iqarag_prompt, level_word
from lmmiqa.prompts import IQARAG_ANSWER_PREFIX
from lmmiqa.retrieval.bank import BankSource, build_bank
from lmmiqa.retrieval.encoders import create_encoder
from lmmiqa.retrieval.testing import PixelEncoder
from lmmiqa.testing import TINY_ARCHS, force_token, make_image
from lmmiqa.types import Prompt

pytest.importorskip("faiss")
pytest.importorskip("torch")
pytest.importorskip("transformers")

HELD_OUT = "refs/c.png"


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """3 source images x 3 distortions x 5 severities = 45 images with pseudo-MOS 4.2 .. 1.0."""
    root = tmp_path_factory.mktemp("iqarag_ladder")
    sources = [(name, make_image(40, 40, seed=i)) for i, name in enumerate("abc")]
    return make_ladder(root, images=sources, types=["gaussian_blur", "jpeg", "gaussian_noise"], size=32)


@pytest.fixture(scope="module")
def bank_part(ladder):
    """The ladder of sources a and b (30 images); c's 15 images are the held-out queries."""
    return ladder.subset([it.ref_id != HELD_OUT for it in ladder])


@pytest.fixture(scope="module")
def queries(ladder):
    return [it.path for it in ladder if it.ref_id == HELD_OUT]


@pytest.fixture(scope="module")
def qwen(tiny_model_path):
    return str(tiny_model_path("qwen2_5_vl"))


@pytest.fixture(scope="module")
def vt_bank(tmp_path_factory, bank_part, qwen):
    out = tmp_path_factory.mktemp("iqarag_bank") / "bank"
    build_bank(out, bank_part, create_encoder("vision-tower", model=qwen, device="cpu"))
    return out


@pytest.fixture(scope="module")
def pixel_bank(tmp_path_factory, bank_part):
    out = tmp_path_factory.mktemp("iqarag_pixel_bank") / "bank"
    build_bank(out, bank_part, PixelEncoder())
    return out


def _scorer(model, bank, **options):
    return lmmiqa.create_scorer("iqarag", model=model, bank=str(bank), device="cpu", **options)


# --------------------------------------------------------------------------- the prompt (golden)


def test_prompt_wording_is_frozen(qwen, vt_bank):
    ref_a, ref_b, query = object(), object(), object()
    prompt = iqarag_prompt([(ref_a, "bad"), (ref_b, "excellent")], query)
    assert prompt.answer_prefix == "The quality of this image is"
    (msg,) = prompt.messages
    assert msg.role == "user"
    assert msg.content == (
        "Give you 2 images.", ref_a, "This image's quality is bad.", ref_b, "This image's quality is excellent.",
        query, "How would you rate the quality of this image?",
    )
    assert [level_word(b) for b in (1, 2, 3, 4, 5)] == ["bad", "poor", "fair", "good", "excellent"]
    # as the tiny Qwen2.5-VL's chat template renders it (image placeholders where the images go)
    img = make_image(32, 32)
    texts, images = _scorer(qwen, vt_bank).backend._render([iqarag_prompt([(img, "bad"), (img, "excellent")], img)])
    vis = "<|vision_start|><|image_pad|><|vision_end|>"
    assert texts == [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nGive you 2 images."
        f"{vis}This image's quality is bad.{vis}This image's quality is excellent.{vis}"
        "How would you rate the quality of this image?<|im_end|>\n<|im_start|>assistant\nThe quality of this image is"
    ]
    assert len(images[0]) == 3


# --------------------------------------------------------------------------- end to end


def test_held_out_queries_get_one_reference_per_bin(qwen, vt_bank, queries, bank_part):
    scorer = _scorer(qwen, vt_bank)
    results = scorer.score(queries[:4], batch_size=4)
    bank_paths = set(bank_part.paths())
    for q, r in zip(queries, results):
        assert r.ok, r.error
        assert r.method == "iqarag" and r.model == qwen and r.scale == (1.0, 5.0)
        assert 1.0 <= r.score <= 5.0
        assert sum(r.probabilities.values()) == pytest.approx(1.0)
        refs = r.details["references"]
        assert r.details["n_references"] == len(refs) == 5  # the bank covers all five bins, K = 50 > 30 items
        assert [x["bin"] for x in refs] == [1, 2, 3, 4, 5]  # lowest bin first
        assert set(refs[0]) == {"id", "path", "mos", "bin", "distance"}
        assert all(x["path"] in bank_paths and x["path"] != q for x in refs)
        assert r.details["encoder"] == f"vision-tower:{qwen}" and not r.details["self_in_bank"]
        assert set(r.timings) >= {"embed", "retrieve", "references", "forward", "load"}
    # the vision-tower bank of the scorer's own model reuses its loaded model
    assert scorer.encoder.backend is scorer.backend


def test_forced_level_logit_makes_the_score_that_level(qwen, vt_bank, queries):
    scorer = _scorer(qwen, vt_bank)
    for word, value in (("excellent", 5.0), ("poor", 2.0)):
        (tid,) = scorer.backend.token_ids([" " + word], IQARAG_ANSWER_PREFIX)
        with force_token(scorer.backend.model, tid):
            results = scorer.score(queries[:2])
        for r in results:
            assert r.score == pytest.approx(value, abs=1e-6)
            assert r.details["argmax"] == value


def test_batched_equals_one_at_a_time(qwen, vt_bank, queries):
    scorer = _scorer(qwen, vt_bank)
    batched = scorer.score(queries[:3], batch_size=3)
    single = [scorer.score([q], batch_size=1)[0] for q in queries[:3]]
    for b, s in zip(batched, single):
        assert b.score == pytest.approx(s.score, abs=1e-5)
        assert [x["id"] for x in b.details["references"]] == [x["id"] for x in s.details["references"]]


def test_the_query_is_never_its_own_reference(qwen, vt_bank, bank_part, tmp_path):
    scorer = _scorer(qwen, vt_bank)
    inside = bank_part.paths()[:2]
    copy = tmp_path / "renamed.png"
    shutil.copy(bank_part.paths()[3], copy)
    in_memory = open_image(bank_part.paths()[4])
    results = scorer.score([*inside, str(copy), in_memory])
    originals = [*inside, bank_part.paths()[3], bank_part.paths()[4]]
    for original, r in zip(originals, results):
        assert r.ok, r.error
        assert r.details["self_in_bank"]
        assert original not in [x["path"] for x in r.details["references"]]
        assert all(x["distance"] > 1e-4 for x in r.details["references"])


def test_order_by_distance(qwen, vt_bank, queries):
    r = _scorer(qwen, vt_bank, order="distance").score(queries[:1])[0]
    d = [x["distance"] for x in r.details["references"]]
    assert d == sorted(d) and r.details["order"] == "distance"


def test_reference_cache(qwen, vt_bank, queries):
    scorer = _scorer(qwen, vt_bank, reference_max_side=16)
    scorer.score(queries[:3])
    first = scorer.cache.stats
    assert first.misses > 0 and first.entries == first.misses
    scorer.score(queries[:3])
    second = scorer.cache.stats
    assert second.misses == first.misses and second.hits >= first.hits + 15
    assert all(max(img.size) <= 16 for img, _ in scorer.cache._data.values())
    off = _scorer(qwen, vt_bank, cache_items=0)
    off.score(queries[:1])
    assert len(off.cache) == 0 and off.cache.stats.misses == 5


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_multi_image_prompts_on_every_tiny_architecture(tiny_model_path, arch, bank_part, queries, tmp_path):
    model = str(tiny_model_path(arch))
    small = bank_part.subset([it.ref_id == "refs/a.png" for it in bank_part])
    build_bank(tmp_path / "bank", small, create_encoder("vision-tower", model=model, device="cpu"))
    results = _scorer(model, tmp_path / "bank").score(queries[:2], batch_size=2)
    for r in results:
        assert r.ok, r.error
        assert 1.0 <= r.score <= 5.0 and 1 <= r.details["n_references"] <= 5


# --------------------------------------------------------------------------- without a real model


class RecordingBackend(Backend):
    """Answers every prompt with the same level distribution and records the prompts."""

    name = "fake"

    def __init__(self, multi_image: bool = True, fail: bool = False) -> None:
        super().__init__()
        self.model_id = "fake"
        self.supports_multi_image = multi_image
        self.fail = fail
        self.prompts: list[Prompt] = []

    def level_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str]) -> np.ndarray:
        if self.fail:
            raise RuntimeError("Image features and image tokens do not match")
        self.prompts.extend(prompts)
        assert list(candidates) == [" bad", " poor", " fair", " good", " excellent"]
        return np.log(np.tile([0.1, 0.1, 0.1, 0.2, 0.5], (len(prompts), 1)))

    def generate(self, prompts, max_new_tokens=256, temperature=0.0):
        raise NotImplementedError


def _fake_scorer(bank, backend, **options):
    cfg = IQARAGConfig(bank=str(bank), model="fake", **options)
    return IQARAG(cfg, backend=backend, encoder=PixelEncoder())


def test_prompts_hold_the_references_then_the_query(pixel_bank, queries):
    backend = RecordingBackend()
    results = _fake_scorer(pixel_bank, backend).score(queries[:2])
    assert [r.score for r in results] == pytest.approx([0.1 + 0.2 + 0.3 + 0.8 + 2.5] * 2)
    for prompt, r in zip(backend.prompts, results):
        p = r.details["n_references"]
        assert len(prompt.images) == p + 1
        content = prompt.messages[0].content
        assert content[0] == f"Give you {p} images."
        words = [c for c in content if isinstance(c, str) and c.startswith("This image's quality is")]
        assert words == [f"This image's quality is {level_word(x['bin'])}." for x in r.details["references"]]


def test_backend_without_multi_image_fails_clearly(pixel_bank, queries):
    results = _fake_scorer(pixel_bank, RecordingBackend(multi_image=False)).score(queries[:2])
    assert all(not r.ok and "takes one image per prompt" in r.error for r in results)


def test_model_failing_on_multi_image_prompts_fails_clearly(pixel_bank, queries):
    results = _fake_scorer(pixel_bank, RecordingBackend(fail=True)).score(queries[:1])
    assert "failed on IQARAG's multi-image prompts" in results[0].error
    assert "accepts several images" in results[0].error


def test_no_reference_left(tmp_path):
    img = tmp_path / "x.png"
    make_image(30, 30, seed=5).save(img)
    shutil.copy(img, tmp_path / "y.png")
    src = BankSource(ids=("x.png", "y.png"), paths=(str(img), str(tmp_path / "y.png")), scores=(1.0, 5.0))
    build_bank(tmp_path / "bank", src, PixelEncoder())
    (r,) = _fake_scorer(tmp_path / "bank", RecordingBackend()).score([str(img)])
    assert not r.ok and "no reference left" in r.error


def test_options_are_validated(pixel_bank, tmp_path):
    with pytest.raises(ConfigError, match="bank=DIR"):
        lmmiqa.create_scorer("iqarag", model="fake")
    with pytest.raises(ConfigError, match="quality, distance"):
        IQARAGConfig(bank=str(pixel_bank), order="random")
    with pytest.raises(ConfigError, match="top_k"):
        IQARAGConfig(bank=str(pixel_bank), top_k=0)
    with pytest.raises(DataError, match="not found"):
        lmmiqa.create_scorer("iqarag", model="fake", bank=str(tmp_path / "missing"))


# --------------------------------------------------------------------------- leakage guard


def test_eval_refuses_overlap_unless_allowed(pixel_bank, ladder, queries):
    from lmmiqa.evaluation.runner import evaluate

    scorer = _fake_scorer(pixel_bank, RecordingBackend())
    assert scorer.check_overlap(ladder.paths()) == 30
    assert scorer.check_overlap(queries) == 0
    with pytest.raises(ConfigError, match="30 of the 45 image"):
        evaluate(scorer, ladder, n_boot=0, plot=False)
    report = evaluate(scorer, ladder, n_boot=0, plot=False, allow_overlap=True, limit=3)
    assert report.n == 3
    assert report.overlap == {"n": 3, "of": 3, "allowed": True}  # the report says so
    assert "evaluated anyway (--allow-overlap)" in report.to_markdown()
    held_out = ladder.subset([it.ref_id == HELD_OUT for it in ladder])
    clean = evaluate(scorer, held_out, n_boot=0, plot=False)
    assert clean.n == 15 and clean.overlap == {"n": 0, "of": 15, "allowed": False}
    assert "0 of 15 evaluated images (checked)" in clean.to_markdown()
    desc = scorer.describe()
    assert desc["config"]["bank_fingerprint"] == scorer.bank.fingerprint and desc["bank"]["count"] == 30


def test_results_are_json_safe(pixel_bank, queries):
    import json

    (r,) = _fake_scorer(pixel_bank, RecordingBackend()).score([Path(queries[0])])
    assert json.loads(json.dumps(r.to_dict()))["details"]["references"][0]["bin"] == 1


# --------------------------------------------------------------------------- the paper preset, P and the answer prefix


def _preset_scorer(bank, backend, preset="paper", **options):
    from lmmiqa.config import build_config

    cfg = build_config(IQARAGConfig, IQARAG.preset_options(preset, {"bank": str(bank), **options}), what="iqarag")
    return IQARAG(cfg, backend=backend, encoder=PixelEncoder())


def test_paper_preset_applies_and_is_recorded(pixel_bank, queries):
    from lmmiqa.methods.iqarag import IQARAG_PAPER

    assert IQARAG_PAPER.values["top_k"].is_decision and not IQARAG_PAPER.values["model"].is_decision
    backend = RecordingBackend()
    scorer = _preset_scorer(pixel_bank, backend)
    cfg = scorer.config
    assert (cfg.model, cfg.references, cfg.top_k, cfg.answer_prefix, cfg.preset) == (
        "Qwen/Qwen3-VL-8B-Instruct", 5, 50, "The quality of this image is", "paper")
    results = scorer.score(queries[:2])
    assert all(r.details["preset"] == "paper" and r.details["n_references"] <= 5 for r in results)
    assert all(p.answer_prefix == "The quality of this image is" for p in backend.prompts)
    # explicit options win over the preset's values; the preset is still recorded
    other = _preset_scorer(pixel_bank, RecordingBackend(), model="fake", top_k=7)
    assert (other.config.model, other.config.top_k, other.config.references, other.preset) == ("fake", 7, 5, "paper")


def test_references_keeps_the_nearest_p(pixel_bank, queries):
    full = _fake_scorer(pixel_bank, RecordingBackend()).score(queries[:3])
    backend = RecordingBackend()
    two = _fake_scorer(pixel_bank, backend, references=2).score(queries[:3])
    for a, b, prompt in zip(full, two, backend.prompts):
        nearest = sorted(a.details["references"], key=lambda x: (x["distance"], x["id"]))[:2]
        assert sorted(x["id"] for x in b.details["references"]) == sorted(x["id"] for x in nearest)
        assert b.details["n_references"] == len(prompt.images) - 1 == 2
        assert prompt.messages[0].content[0] == "Give you 2 images."
    with pytest.raises(ConfigError, match=r"references \(P\) must be in 1..5"):
        IQARAGConfig(bank=str(pixel_bank), references=6)


def test_answer_prefix_option(pixel_bank, queries):
    backend = RecordingBackend()
    _fake_scorer(pixel_bank, backend, answer_prefix="The quality of the image is").score(queries[:1])
    assert backend.prompts[0].answer_prefix == "The quality of the image is"
    with pytest.raises(ConfigError, match="answer_prefix"):
        IQARAGConfig(bank=str(pixel_bank), answer_prefix="  ")
