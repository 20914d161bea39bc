"""mPLUG-Owl2 through the transformers backend's paths, against numbers from the official code
(``fixtures/mplug_owl2``: image features, a batch of two images, a left-padded batch of two prompt lengths,
bf16/fp16, greedy generation, hidden states), and the published-layout round trip."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "mplug_owl2"

QUESTION = "How would you rate the quality of this image?"
PREFIX = "The quality of the image is"
AESTHETICS_SYSTEM = "A chat between a curious human and an artificial intelligence assistant."
AESTHETICS_Q = "How would you rate the aesthetics of this image?"
AESTHETICS_PREFIX = "The aesthetics of the image is"


def _collapse(ids: list[int]) -> list[int]:
    return [t for i, t in enumerate(ids) if not (t == -200 and i and ids[i - 1] == -200)]


def _prompts(images):
    from lmmiqa.images import pad_to_square
    from lmmiqa.types import Prompt

    q = Prompt.simple([QUESTION, pad_to_square(images[0])], answer_prefix=PREFIX)
    a = Prompt.simple([AESTHETICS_Q, pad_to_square(images[1])], system=AESTHETICS_SYSTEM, answer_prefix=AESTHETICS_PREFIX)
    return q, a


def _official_logprobs(rows: dict, i: int) -> np.ndarray:
    """Official level logits (excellent..bad) of row i as log-probabilities in lmmiqa's order (bad..excellent)."""
    return np.array(rows["level_logits"][i])[::-1] - rows["logsumexp"][i]


def _level_logprobs(backend, prompts, prefix):
    from lmmiqa.levels import QALIGN_SCALE

    return backend.level_logprobs(prompts, QALIGN_SCALE.candidates(prefix))


def test_image_features_equal_the_official(owl2_backend, owl2_images):
    import torch

    from lmmiqa.images import pad_to_square

    expected = np.load(FIXTURES / "official_onealign_image_features.npz")["features"]
    pixels = owl2_backend.processor.image_processor([pad_to_square(im) for im in owl2_images],
                                                    return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        feats = owl2_backend.model.model.image_features(pixels).float().numpy()
    assert feats.shape == expected.shape == (2, 65, 64)
    np.testing.assert_allclose(feats, expected, atol=1e-4)
    # the two images are told apart far beyond the tolerance (the check above can see a swap)
    assert np.abs(expected[0] - expected[1]).max() > 0.01


def test_batches_and_left_padding_equal_the_official(owl2_backend, owl2_images, official_fixture):
    from lmmiqa.images import pad_to_square
    from lmmiqa.types import Prompt

    ref = official_fixture("official_onealign.json")
    q, a = _prompts(owl2_images)
    q1 = Prompt.simple([QUESTION, pad_to_square(owl2_images[1])], answer_prefix=PREFIX)
    # two images, one prompt (the official scorer's batch)
    lp = _level_logprobs(owl2_backend, [q, q1], PREFIX)
    for i in range(2):
        np.testing.assert_allclose(lp[i], _official_logprobs(ref["fp32_question_batch"], i), atol=1e-4)
    # prompts of two lengths in one left-padded forward: each row equals the official run of that prompt alone
    inputs = owl2_backend.encode([q, a])
    assert _collapse(inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()) == ref["question_ids"]
    assert _collapse(inputs["input_ids"][1].tolist()) == ref["aesthetics_ids"]
    assert int(inputs["attention_mask"][0].sum()) < inputs["attention_mask"].shape[1]  # row 0 is padded
    lp_q = _level_logprobs(owl2_backend, [q, a], PREFIX)[0]
    lp_a = _level_logprobs(owl2_backend, [a, q], AESTHETICS_PREFIX)[0]
    np.testing.assert_allclose(lp_q, _official_logprobs(ref["fp32_question_batch"], 0), atol=1e-4)
    np.testing.assert_allclose(lp_a, _official_logprobs(ref["fp32_aesthetics_image1"], 0), atol=1e-4)


@pytest.mark.parametrize("dtype,atol", [("bfloat16", 0.05), ("float16", 0.01)])
def test_low_precision_matches_the_official_at_that_precision(owl2_base_folder, owl2_images, official_fixture, dtype,
                                                                 atol):
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig

    ref = official_fixture("official_onealign.json")[f"{dtype}_question_batch"]
    backend = TransformersBackend(TransformersConfig(model=str(owl2_base_folder), device="cpu", dtype=dtype,
                                                     max_batch_tokens=0))
    assert str(backend.dtype) == f"torch.{dtype}" and str(next(backend.model.parameters()).dtype) == f"torch.{dtype}"
    q, _ = _prompts(owl2_images)
    lp = _level_logprobs(backend, [q], PREFIX)[0]
    # rounding differs between the two implementations at this precision; the tolerance is a few ulps of the logits
    np.testing.assert_allclose(lp, _official_logprobs(ref, 0), atol=atol)


def test_generate_and_hidden_states_equal_the_official(owl2_backend, owl2_images, official_fixture):
    ref = official_fixture("official_onealign.json")
    q, _ = _prompts(owl2_images)
    text = owl2_backend.generate([q], max_new_tokens=6)[0]
    expected = owl2_backend.tokenizer.decode(ref["fp32_generate_image0"], skip_special_tokens=True)
    assert text == expected
    hidden = owl2_backend.hidden_states([q])
    assert hidden.shape == (1, 64)
    np.testing.assert_allclose(hidden[0], ref["fp32_question_hidden_last"][0], atol=1e-4)


def test_eager_attention_and_token_budget_batching(owl2_base_folder, owl2_backend, owl2_images):
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig

    q, a = _prompts(owl2_images)
    # eager attention, and a token budget that fits one prompt per forward: the same numbers as SDPA unbatched
    backend = TransformersBackend(TransformersConfig(model=str(owl2_base_folder), device="cpu", dtype="float32",
                                                     attn_implementation="eager", max_batch_tokens=120))
    assert backend.model.config._attn_implementation == "eager"
    counts = backend.prompt_token_counts([q, a])
    for prompt, count in zip([q, a], counts):
        ids = backend.encode([prompt])["input_ids"][0]
        assert count["tokens"] == len(ids) and count["per_image"] == [65] and count["image_tokens"] == 65
    sizes = backend.processor._get_num_multimodal_tokens(image_sizes=[[10, 20], [4000, 3000]]).num_image_tokens
    assert sizes == [65, 65]
    assert sorted(backend.plan([q, a, q])) == [[0], [1], [2]]  # one prompt per forward (budget 120 tokens)
    lp = _level_logprobs(backend, [q, a, q], PREFIX)
    assert backend.stats["forwards"] == 3
    np.testing.assert_allclose(lp, _level_logprobs(owl2_backend, [q, a, q], PREFIX), atol=1e-5)


def test_save_pretrained_round_trip_keeps_the_published_names(owl2_backend, owl2_images, tmp_path: pathlib.Path):
    import json

    from safetensors import safe_open

    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig

    out = tmp_path / "saved"
    owl2_backend.model.save_pretrained(out)
    owl2_backend.processor.save_pretrained(out)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    names: set[str] = set()
    for f in files:
        with safe_open(out / f, "pt") as fh:
            names.update(fh.keys())
    assert names == set(owl2_backend.model.state_dict())  # published names, persistent buffers included
    assert json.loads((out / "preprocessor_config.json").read_text())["image_processor_type"] == "CLIPImageProcessor"
    assert (out / "tokenizer.model").is_file()  # the SentencePiece model travels with the folder
    again = TransformersBackend(TransformersConfig(model=str(out), device="cpu", dtype="float32", max_batch_tokens=0))
    assert again.processor.sentencepiece is not None
    q, a = _prompts(owl2_images)
    np.testing.assert_allclose(_level_logprobs(again, [q, a], PREFIX), _level_logprobs(owl2_backend, [q, a], PREFIX),
                               atol=1e-6)


def test_loading_reports_no_missing_or_unexpected_tensors(owl2_parity_folder):
    import transformers

    from lmmiqa.families import prepare

    assert prepare(str(owl2_parity_folder)).model_type == "mplug_owl2"
    model, info = transformers.AutoModelForImageTextToText.from_pretrained(str(owl2_parity_folder),
                                                                           output_loading_info=True)
    assert type(model).__name__ == "MPLUGOwl2ForConditionalGeneration"
    # the folder holds rotary inv_freq tensors (as older checkpoints do): ignored, not unexpected
    assert info["missing_keys"] in (set(), []) and info["unexpected_keys"] in (set(), [])
    assert info["mismatched_keys"] in (set(), [])
