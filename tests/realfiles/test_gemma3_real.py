"""Every MLLM method on a shrunken Gemma 3 with the real files of google/gemma-3-4b-it (tokenizer, chat template,
processor, config; random weights): what makes Gemma 3 unlike the Qwen models is checked and kept working
(issue 21 §4).

- its digits are single tokens whose ids are neither contiguous nor in numeric order (never an offset);
- its chat template writes ``<bos>`` itself (rendering, then tokenizing with special tokens, would give two);
- ``processor.image_token_id`` is ``<start_of_image>`` (255999), not the placeholder: every image is 256
  ``<image_soft_token>`` (262144) whatever its size;
- the processor returns ``token_type_ids``, which the model needs.

Skipped with the reason when ../shared/data/hf/gemma-3-4b-it is absent. The test files are fixtures only (Gemma
Terms of Use): nothing of them is in the repository.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

import lmmiqa
from lmmiqa.levels import LETTER_SCALE, QALIGN_SCALE, standard_scale
from lmmiqa.prompts import AGENTIC_ANSWER_PREFIX, QALIGN_ANSWER_PREFIX
from lmmiqa.testing import force_token, make_image
from lmmiqa.types import Prompt

pytest.importorskip("torch")
pytest.importorskip("transformers")

NAME = "gemma-3-4b-it"
#: " bad" .. " excellent" after "The quality of the image is" (shared/data/hf/README.md)
WORD_IDS = [4287, 6934, 5888, 1535, 7516]
#: "1".."9" at the start of the reply: not contiguous, not in numeric order
DIGIT_IDS = [236770, 236778, 236800, 236812, 236810, 236825, 236832, 236828, 236819]
#: " E", " D", " C", " B", " A" after "Answer:"
LETTER_IDS = [645, 622, 565, 603, 562]
#: " A", " B" after the LEAF pair prompt's prefix
PAIR_IDS = [562, 603]
BOS, START_OF_TURN, START_OF_IMAGE, IMAGE_SOFT = 2, 105, 255999, 262144
TOL = 1e-5


@pytest.fixture(scope="module")
def path(real_file_model):
    return str(real_file_model(NAME))


@pytest.fixture(scope="module")
def backend(path):
    return lmmiqa.create_scorer("q-align", model=path, device="cpu").backend


@pytest.fixture(scope="module")
def images():
    return [make_image(64, 64, seed=1), make_image(96, 72, seed=2), make_image(72, 96, seed=3)]


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


# ------------------------------------------------------------------------------------------- the test kit


def test_shrunk_gemma_keeps_the_real_vocabulary_files_and_an_image_projection(path, shared_dir):
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(path)
    assert cfg.model_type == "gemma3" and cfg.text_config.hidden_size == 64 and cfg.text_config.num_hidden_layers == 2
    assert cfg.text_config.vocab_size == 262208 and cfg.image_token_index == IMAGE_SOFT and cfg.mm_tokens_per_image == 256
    assert cfg.vision_config.image_size == 896 and cfg.vision_config.num_hidden_layers == 2
    real = shared_dir / "data" / "hf" / NAME
    for fname in ("tokenizer.json", "chat_template.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (real / fname).read_bytes() == pathlib.Path(path, fname).read_bytes(), fname
    assert json.loads(pathlib.Path(path, "config.json").read_text())["text_config"]["hidden_size"] == 64
    # the builder draws the image projection (Gemma 3 initializes it to zeros: every image would score alike)
    scorer = lmmiqa.create_scorer("q-align", model=path, device="cpu")
    proj = scorer.backend.model.model.multi_modal_projector.mm_input_projection_weight
    assert float(proj.detach().abs().max()) > 0


def test_one_bos_and_256_placeholder_tokens_per_image_whatever_its_size(backend):
    prompt = Prompt.simple([make_image(64, 64), "How is it?"], answer_prefix=QALIGN_ANSWER_PREFIX)
    (text,), _ = backend._render([prompt])
    assert text.startswith("<bos><start_of_turn>user\n<start_of_image>")
    ids = backend.encode([prompt])
    assert "token_type_ids" in ids  # the processor's output, passed to the model
    row = ids["input_ids"][0].tolist()
    assert row[:2] == [BOS, START_OF_TURN] and row.count(BOS) == 1  # the template's BOS only
    assert row.count(IMAGE_SOFT) == 256 and row.count(START_OF_IMAGE) == 1
    assert backend.processor.image_token_id == START_OF_IMAGE != IMAGE_SOFT
    for size in ((64, 64), (1024, 768)):
        (c,) = backend.prompt_token_counts([Prompt.simple([make_image(*size), "q"])])
        assert c["image_tokens"] == 256 and c["per_image"] == [256]  # the placeholder, not <start_of_image>


def test_levels_resolve_to_the_real_ids(backend):
    q = Prompt.simple([make_image(56, 56), "How?"], answer_prefix=QALIGN_ANSWER_PREFIX)
    assert backend.level_token_ids([q], QALIGN_SCALE.candidates(QALIGN_ANSWER_PREFIX)) == [WORD_IDS]
    digits = Prompt.simple([make_image(56, 56), "Score 1 to 9."], system="Rate.")
    assert backend.level_token_ids([digits], standard_scale(9).candidates("")) == [DIGIT_IDS]
    assert sorted(DIGIT_IDS) != DIGIT_IDS  # not in numeric order: an id is never computed as an offset
    letters = Prompt.simple([make_image(56, 56), "A to E?"], system="s", answer_prefix=AGENTIC_ANSWER_PREFIX)
    assert backend.level_token_ids([letters], LETTER_SCALE.candidates(AGENTIC_ANSWER_PREFIX)) == [LETTER_IDS]


# --------------------------------------------------------------------------------------------- the methods


def test_q_align(path, backend, images):
    scorer = lmmiqa.create_scorer("q-align", model=path, device="cpu")
    r = scorer.score(images[:2])
    assert all(x.ok and x.details["image_tokens"] == 256 for x in r)
    assert r[0].score != r[1].score  # the images matter
    for tid, value in ((WORD_IDS[3], 4.0), (WORD_IDS[0], 1.0)):
        for res in _forced(backend.model, tid, lambda: scorer.score(images[:2])):
            assert res.score == pytest.approx(value, abs=1e-6) and res.details["covered_mass"] > 0.99
    _batch_equals_single(scorer, images)


def test_standard_guided_reads_the_scattered_digit_ids(path, backend, images):
    scorer = lmmiqa.create_scorer("standard-guided", model=path, device="cpu", levels=9)
    for digit in (7, 3, 9):
        for res in _forced(backend.model, DIGIT_IDS[digit - 1], lambda: scorer.score(images[:2])):
            assert res.score == pytest.approx(float(digit), abs=1e-6) and res.details["argmax"] == digit
    _batch_equals_single(scorer, images[:2])


def test_llm_iqa(path, backend, images):
    scorer = lmmiqa.create_scorer("llm-iqa", model=path, device="cpu", segmenter="felzenszwalb", levels=7)
    with force_token(backend.model, DIGIT_IDS[5]):
        (r,) = scorer.score(images[1:2])
    assert r.ok and r.details["regions"], r.error
    assert r.score == pytest.approx(6.0, abs=1e-6)
    assert all(reg["image_tokens"] == 256 for reg in r.details["regions"])


def test_iqarag_several_images(path, backend, tmp_path):
    pytest.importorskip("faiss")
    from lmmiqa.data.synth import make_ladder
    from lmmiqa.methods.iqarag import IQARAG, IQARAGConfig
    from lmmiqa.retrieval.bank import build_bank
    from lmmiqa.retrieval.testing import PixelEncoder

    ladder = make_ladder(tmp_path / "ladder", images=[("a", make_image(40, 40, seed=0))], types=["gaussian_blur"],
                         size=32)
    build_bank(tmp_path / "bank", ladder, PixelEncoder())
    scorer = IQARAG(IQARAGConfig(bank=str(tmp_path / "bank"), model=path, device="cpu"), backend=backend,
                    encoder=PixelEncoder())
    with force_token(backend.model, WORD_IDS[4]):
        (r,) = scorer.score([make_image(48, 48, seed=5)])
    assert r.ok, r.error
    assert r.score == pytest.approx(5.0, abs=1e-6)
    assert r.details["image_tokens"] == 256 * (1 + r.details["n_references"])


def test_agentic_iqa_carries_image_tokens_and_covered_mass(path, backend, images):
    opts = {"device": "cpu", "max_new_tokens": 8, "max_retries": 0, "tools": "sharpness", "eta": 0.0}
    scorer = lmmiqa.create_scorer("agentic-iqa", model=path, **opts)
    for tid, value in ((LETTER_IDS[4], 5.0), (LETTER_IDS[1], 2.0)):
        (res,) = _forced(backend.model, tid, lambda: scorer.score(images[:1]))
        assert res.score == pytest.approx(value, abs=1e-6)
        assert res.details["fusion"]["p"][str(int(value))] == pytest.approx(1.0, abs=1e-6)
        assert res.details["image_tokens"] == 256 and res.details["prompt_tokens"] > 256
        assert res.details["covered_mass"] > 0.99


def test_q_scorer_trains_and_scores(path, tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("accelerate")
    from lmmiqa.methods.q_scorer import QScorer
    from lmmiqa.training.q_scorer import QScorerTrainConfig, train_q_scorer

    rows = []
    for i, m in enumerate([1.2, 4.6, 2.5]):
        make_image(56 + 8 * i, 56, seed=20 + i).save(tmp_path / f"img{i}.png")
        rows.append((str(tmp_path / f"img{i}.png"), m))
    cfg = QScorerTrainConfig(model=path, tokens=5, epochs=1, batch_size=3, lr=5e-3, head_dims=(16,), device="cpu",
                             decode_workers=0, progress=False, warmup_ratio=0.0, seed=0, mos_range=(1.0, 5.0))
    result = train_q_scorer(rows, tmp_path / "adapter", cfg)
    assert result.complete
    scorer = QScorer.from_options(adapter=str(result.out), device="cpu")
    backend = scorer.loaded.backend
    with force_token(backend.model, scorer.spec.token_ids[3]):
        out = scorer.score([p for p, _ in rows[:2]])
    assert all(r.ok and r.details["argmax"] == 4 and r.details["image_tokens"] == 256 for r in out)


def test_leaf_teacher_pair_prompt(path, backend, images):
    from lmmiqa.distill.teacher import _pair_prompt, judge_pairs_prompt, pair_candidates

    assert backend.level_token_ids([_pair_prompt(images[0], images[1])], pair_candidates()) == [PAIR_IDS]
    with force_token(backend.model, PAIR_IDS[0]):  # always " A": pure position bias
        p_ab, p_ba = judge_pairs_prompt(backend, images[:1], images[1:2])
    assert p_ab[0] == pytest.approx(1.0, abs=1e-6) and p_ba[0] == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(p_ab).all()
