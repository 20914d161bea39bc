"""Every MLLM method on both real-file models (the real tokenizer, chat template and processor of
Qwen2.5-VL-7B-Instruct and Qwen3-VL-8B-Instruct, shrunken random weights): the level candidates resolve to the
real ids, the rendered prompt equals the golden text made with the real chat template (Qwen2.5-VL's default
system message included where a method sets none), +20 on one level's logit makes the score that level, and a
batch scores like one image at a time. Skipped with the reason when ../shared/data/hf is absent."""

from __future__ import annotations

import numpy as np
import pytest

import lmmiqa
from lmmiqa.levels import QALIGN_SCALE, standard_scale
from lmmiqa.prompts import AGENTIC_ANSWER_PREFIX, IQARAG_ANSWER_PREFIX, QALIGN_ANSWER_PREFIX
from lmmiqa.testing import REAL_FILE_CHECKPOINTS, force_token, make_image

NAMES = tuple(n for n, arch in REAL_FILE_CHECKPOINTS.items() if arch.startswith("qwen"))  # Gemma 3: test_gemma3_real

pytest.importorskip("torch")
pytest.importorskip("transformers")

#: " bad" .. " excellent" (README of shared/data/hf), lowest level first
WORD_IDS = [3873, 7852, 6624, 1661, 9073]
#: "1".."7" right after "<|im_start|>assistant\n"
DIGIT_IDS = [16, 17, 18, 19, 20, 21, 22]
#: " E", " D", " C", " B", " A" after "Answer:" (vocab.json: "ĠE" ...), lowest level first
LETTER_IDS = [468, 422, 356, 425, 362]
#: " A", " B" after "The image with better quality is image"
PAIR_IDS = [362, 425]
TOKENIZER_LEN = {"Qwen2.5-VL-7B-Instruct": 151665, "Qwen3-VL-8B-Instruct": 151669}
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
TOL = 1e-5


@pytest.fixture(scope="module")
def images():
    """Three small images of different sizes (a handful of image tokens each)."""
    return [make_image(64, 64, seed=1), make_image(96, 72, seed=2), make_image(72, 96, seed=3)]


def _path(real_file_model, name):
    return str(real_file_model(name))


def _forced(model, token_id, fn):
    with force_token(model, token_id):
        return fn()


def _batch_equals_single(scorer, imgs, key=lambda r: r.score):
    batched = scorer.score(imgs, batch_size=len(imgs))
    single = [scorer.score([im], batch_size=1)[0] for im in imgs]
    for b, s in zip(batched, single):
        assert b.ok and s.ok, (b.error, s.error)
        assert key(b) == pytest.approx(key(s), abs=TOL)
    return batched


# ------------------------------------------------------------------------------------------------- q-align


@pytest.mark.parametrize("name", NAMES)
def test_q_align(name, real_file_model, images, golden, rendered_texts):
    scorer = lmmiqa.create_scorer("q-align", model=_path(real_file_model, name), device="cpu")
    backend = scorer.backend
    seen = rendered_texts(backend)
    prompt = scorer.build_prompt(images[0])
    assert backend.level_token_ids([prompt], QALIGN_SCALE.candidates(QALIGN_ANSWER_PREFIX)) == [WORD_IDS]
    (r,) = scorer.score(images[:1])
    assert r.ok and 0.0 < r.details["covered_mass"] < 1.0
    golden.check(name, "q-align", {"prompt": seen[0]})
    assert seen[0].startswith(DEFAULT_SYSTEM) == (name == "Qwen2.5-VL-7B-Instruct")
    assert seen[0].endswith("<|im_start|>assistant\nThe quality of the image is")
    for tid, value in ((WORD_IDS[4], 5.0), (WORD_IDS[1], 2.0)):
        for res in _forced(backend.model, tid, lambda: scorer.score(images[:2])):
            assert res.score == pytest.approx(value, abs=1e-6) and res.details["argmax"] == value
    _batch_equals_single(scorer, images)


# ----------------------------------------------------------------------------------------- standard-guided


@pytest.mark.parametrize("name", NAMES)
def test_standard_guided(name, real_file_model, images, golden, rendered_texts):
    scorer = lmmiqa.create_scorer("standard-guided", model=_path(real_file_model, name), device="cpu")
    backend = scorer.backend
    seen = rendered_texts(backend)
    prompt = scorer.build_prompt(images[0])
    assert prompt.answer_prefix == ""
    # no answer prefix: the digit follows the template's "<|im_start|>assistant\n" and has no leading space
    assert backend.level_token_ids([prompt], standard_scale(7).candidates("")) == [DIGIT_IDS]
    scorer.score(images[:1])
    golden.check(name, "standard-guided", {"prompt": seen[0]})
    assert not seen[0].startswith(DEFAULT_SYSTEM)  # the method sets its own system message
    for tid, value in ((DIGIT_IDS[6], 7.0), (DIGIT_IDS[2], 3.0)):
        for res in _forced(backend.model, tid, lambda: scorer.score(images[:2])):
            assert res.score == pytest.approx(value, abs=1e-6) and res.details["argmax"] == value
    _batch_equals_single(scorer, images)


# ------------------------------------------------------------------------------------------------- llm-iqa


@pytest.mark.parametrize("name", NAMES)
def test_llm_iqa(name, real_file_model, images, golden, rendered_texts):
    path = _path(real_file_model, name)
    scorer = lmmiqa.create_scorer("llm-iqa", model=path, device="cpu", segmenter="felzenszwalb")
    backend = lmmiqa.create_scorer("q-align", model=path, device="cpu").backend  # the shared backend
    seen = rendered_texts(backend)
    (r,) = scorer.score(images[1:2])
    assert r.ok, r.error
    assert r.details["regions"], "felzenszwalb found no region: the crops were not exercised"
    # the whole image and every crop use the same standard-guided prompt
    assert len(seen) == 1
    golden.check(name, "llm-iqa", {"prompt": seen[0]})
    prompt = scorer.members[0].build_prompt(images[0])
    assert backend.level_token_ids([prompt], standard_scale(7).candidates("")) == [DIGIT_IDS]
    for tid, value in ((DIGIT_IDS[6], 7.0), (DIGIT_IDS[1], 2.0)):
        for res in _forced(backend.model, tid, lambda: scorer.score(images[1:])):
            assert res.score == pytest.approx(value, abs=1e-6)
            assert res.details["global"] == pytest.approx(value, abs=1e-6)
            assert all(reg["score"] == pytest.approx(value, abs=1e-6) for reg in res.details["regions"])
    _batch_equals_single(scorer, images[1:])


# -------------------------------------------------------------------------------------------------- iqarag


@pytest.fixture(scope="module")
def pixel_bank(tmp_path_factory):
    """A bank of 2 sources x 1 distortion x 5 severities (pseudo-MOS covering all five bins), pixel encoder."""
    pytest.importorskip("faiss")
    from lmmiqa.data.synth import make_ladder
    from lmmiqa.retrieval.bank import build_bank
    from lmmiqa.retrieval.testing import PixelEncoder

    root = tmp_path_factory.mktemp("real_iqarag")
    ladder = make_ladder(root / "ladder", images=[(n, make_image(40, 40, seed=i)) for i, n in enumerate("ab")],
                         types=["gaussian_blur"], size=32)
    build_bank(root / "bank", ladder, PixelEncoder())
    return root / "bank"


@pytest.mark.parametrize("name", NAMES)
def test_iqarag(name, real_file_model, images, pixel_bank, golden, rendered_texts):
    from lmmiqa.methods.iqarag import IQARAG, IQARAGConfig, iqarag_prompt
    from lmmiqa.retrieval.testing import PixelEncoder

    path = _path(real_file_model, name)
    backend = lmmiqa.create_scorer("q-align", model=path, device="cpu").backend
    scorer = IQARAG(IQARAGConfig(bank=str(pixel_bank), model=path, device="cpu"), backend=backend,
                    encoder=PixelEncoder())
    seen = rendered_texts(backend)
    (r,) = scorer.score(images[:1])
    assert r.ok, r.error
    assert [x["bin"] for x in r.details["references"]] == [1, 2, 3, 4, 5]
    golden.check(name, "iqarag", {"prompt": seen[0]})
    assert seen[0].count("<|vision_start|><|image_pad|><|vision_end|>") == 6  # five references + the query
    prompt = iqarag_prompt([(images[1], "bad"), (images[2], "good")], images[0])
    assert backend.level_token_ids([prompt], QALIGN_SCALE.candidates(IQARAG_ANSWER_PREFIX)) == [WORD_IDS]
    for tid, value in ((WORD_IDS[3], 4.0), (WORD_IDS[0], 1.0)):
        for res in _forced(backend.model, tid, lambda: scorer.score(images[:2])):
            assert res.score == pytest.approx(value, abs=1e-6)
    _batch_equals_single(scorer, images[:2])


# --------------------------------------------------------------------------------------------- agentic-iqa


@pytest.mark.parametrize("name", NAMES)
def test_agentic_iqa(name, real_file_model, images, golden, rendered_texts):
    from lmmiqa.levels import LETTER_SCALE

    path = _path(real_file_model, name)
    # eta = 0: the tool prior is uniform, so the fused score is the letters' expected value (forced check exact)
    opts = {"device": "cpu", "max_new_tokens": 8, "max_retries": 0, "tools": "sharpness", "eta": 0.0}
    scorer = lmmiqa.create_scorer("agentic-iqa", model=path, **opts)
    backend = scorer.backend
    seen = rendered_texts(backend)
    (r,) = scorer.score(images[:1])
    assert r.ok, r.error
    levels = [t for t in seen if t.endswith(AGENTIC_ANSWER_PREFIX)]
    assert len(levels) == 1
    golden.check(name, "agentic-iqa", {"planner": seen[0], "levels": levels[0]})
    cands = LETTER_SCALE.candidates(AGENTIC_ANSWER_PREFIX)
    assert cands == [" E", " D", " C", " B", " A"]
    assert backend.tokenizer.convert_tokens_to_ids(["ĠE", "ĠD", "ĠC", "ĠB", "ĠA"]) == LETTER_IDS
    from lmmiqa.types import Prompt

    level_prompt = Prompt.simple([images[0], "A to E?"], system="s", answer_prefix=AGENTIC_ANSWER_PREFIX)
    assert backend.level_token_ids([level_prompt], cands) == [LETTER_IDS]
    for tid, value in ((LETTER_IDS[4], 5.0), (LETTER_IDS[1], 2.0)):
        for res in _forced(backend.model, tid, lambda: scorer.score(images[:2])):
            assert res.details["fusion"]["p"][str(int(value))] == pytest.approx(1.0, abs=1e-6)
            assert res.score == pytest.approx(value, abs=1e-6)
    _batch_equals_single(scorer, images[:2])


# ------------------------------------------------------------------------------------------------ q-scorer


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_qs")
    rows = []
    for i, m in enumerate([1.2, 4.6, 2.5, 3.9]):
        make_image(56 + 8 * i, 56, seed=20 + i).save(root / f"img{i}.png")
        rows.append((str(root / f"img{i}.png"), m))
    return rows


@pytest.mark.parametrize("name", NAMES)
def test_q_scorer_train_and_score(name, real_file_model, labelled, tmp_path, golden, rendered_texts):
    pytest.importorskip("peft")
    pytest.importorskip("accelerate")
    from lmmiqa.methods.q_scorer import QScorer
    from lmmiqa.training.q_scorer import QScorerTrainConfig, train_q_scorer
    from lmmiqa.training.q_scorer_model import bin_centers

    path = _path(real_file_model, name)
    cfg = QScorerTrainConfig(model=path, tokens=5, epochs=1, batch_size=4, lr=5e-3, head_dims=(16,), device="cpu",
                             decode_workers=0, progress=False, warmup_ratio=0.0, seed=0, mos_range=(1.0, 5.0))
    result = train_q_scorer(labelled, tmp_path / "adapter", cfg)
    assert result.complete and result.global_step == 1
    scorer = QScorer.from_options(adapter=str(result.out), device="cpu")
    spec = scorer.spec
    # the score tokens are added right after the real vocabulary; the real embedding has rows for them
    n = TOKENIZER_LEN[name]
    assert list(spec.token_ids) == list(range(n, n + 5))
    backend = scorer.loaded.backend
    seen = rendered_texts(backend)
    paths = [p for p, _ in labelled]
    res = scorer.score(paths[:1])
    assert res[0].ok, res[0].error
    golden.check(name, "q-scorer", {"prompt": seen[0]})
    centers = bin_centers(*spec.bins, 5)  # the training split's MOS min-max (issue 13 §2)
    for k in (4, 1):
        out = _forced(backend.model, spec.token_ids[k], lambda: scorer.score(paths[:2]))
        for r in out:
            assert r.details["argmax"] == k + 1
            assert r.details["token_mos"] == pytest.approx(centers[k], abs=1e-6)
    _batch_equals_single(scorer, paths, key=lambda r: r.details["head_raw"])


# ------------------------------------------------------------------------------------------- LEAF teacher


@pytest.mark.parametrize("name", NAMES)
def test_leaf_mllm_teacher(name, real_file_model, images, tmp_path, golden, rendered_texts):
    from lmmiqa.distill.teacher import TeacherConfig, _pair_prompt, pair_candidates, read_jsonl, teach

    path = _path(real_file_model, name)
    scorer = lmmiqa.create_scorer("q-align", model=path, device="cpu")
    backend = scorer.backend
    files = []
    for i, im in enumerate(images):
        files.append(tmp_path / f"im{i}.png")
        im.save(files[-1])
    assert pair_candidates() == [" A", " B"]
    assert backend.level_token_ids([_pair_prompt(images[0], images[1])], pair_candidates()) == [PAIR_IDS]
    seen = rendered_texts(backend)
    cfg = TeacherConfig(method="q-align", options={"model": path, "device": "cpu"}, pairs=2, batch_size=3)
    with force_token(backend.model, PAIR_IDS[0]):  # always " A": pure position bias
        summary = teach([str(f) for f in files], tmp_path / "t", cfg, scorer=scorer)
    assert summary.pair_mode == "prompt" and summary.n_pairs == 2
    pair_texts = [t for t in seen if t.endswith("The image with better quality is image")]
    golden.check(name, "leaf-teacher", {"points": seen[0], "pairs": pair_texts[0]})
    for row in read_jsonl(tmp_path / "t" / "pairs.jsonl"):
        assert row["p_ab"] == pytest.approx(1.0, abs=1e-6) and row["p_ba"] == pytest.approx(0.0, abs=1e-6)
    # the points are Q-Align scores on the real words
    points = read_jsonl(tmp_path / "t" / "points.jsonl")
    assert len(points) == 3 and all(np.isfinite(p["score"]) for p in points)
