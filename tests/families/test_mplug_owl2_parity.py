"""mPLUG-Owl2 (lmmiqa.families.mplug_owl2) equals the official one-align code.

* the full-size state dict (names, shapes, persistent buffers, 8.198 B parameters) equals the official one, built on
  the meta device (no memory);
* the tiny random model of ``shared/data/official/one-align/parity`` (same weight recipe), saved in the published
  folder layout and loaded through the transformers backend, reproduces the official input ids, pixel values (hash)
  and last-position logits within 1e-4, and the level words resolve to the official ids;
* the prompt pieces tokenize as transformers 4.36's LLaMA-2 tokenizer did.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

QUESTION = "How would you rate the quality of this image?"
PREFIX = "The quality of the image is"


def _collapse(ids: list[int], image_id: int = -200) -> list[int]:
    """lmmiqa's input ids hold one placeholder per image position; the official ones one per image."""
    return [t for i, t in enumerate(ids) if not (t == image_id and i and ids[i - 1] == image_id)]


def test_full_size_state_dict_matches_the_official_names_and_shapes(owl2_files):
    import torch

    from lmmiqa.families.mplug_owl2.configuration import MPLUGOwl2Config
    from lmmiqa.families.mplug_owl2.modeling import MPLUGOwl2ForConditionalGeneration

    derived = json.loads(owl2_files["derived"].read_text())
    with torch.device("meta"):
        model = MPLUGOwl2ForConditionalGeneration(MPLUGOwl2Config())
    params = dict(model.named_parameters())
    assert all(p.is_meta for p in params.values())  # nothing allocated
    mine = {k: (list(v.shape), "param" if k in params else "buffer(persistent)") for k, v in model.state_dict().items()}
    theirs = {r["name"]: (r["shape"], r["kind"]) for r in derived["keys"]}
    assert len(theirs) == derived["n_entries"] == 862
    assert sorted(set(theirs) - set(mine)) == [] and sorted(set(mine) - set(theirs)) == []
    assert mine == theirs
    assert sum(p.numel() for p in params.values()) == derived["n_params"] == 8_197_859_328
    # the buffers the published files hold: the abstractor's fixed position embeddings; the rotary inverse
    # frequencies are recomputed (not saved) and ignored when a checkpoint holds them
    assert sorted({k.rsplit(".", 1)[-1] for k, (_, kind) in mine.items() if kind != "param"}) == ["k_pos_embed",
                                                                                                  "q_pos_embed"]
    import re

    pattern = re.compile(MPLUGOwl2ForConditionalGeneration._keys_to_ignore_on_load_unexpected[0])
    assert pattern.search("model.layers.31.self_attn.rotary_emb.inv_freq")


def test_tiny_state_dict_matches_the_official_tiny(owl2_files):
    from lmmiqa.families.mplug_owl2.tiny import tiny_model

    official = json.loads((owl2_files["parity"] / "tiny_state_dict_keys.json").read_text())
    model = tiny_model()
    params = dict(model.named_parameters())
    mine = [(k, list(v.shape), "param" if k in params else "buffer") for k, v in model.state_dict().items()]
    assert mine == [(r["name"], r["shape"], r["kind"]) for r in official]


def test_official_layout_loads_and_reproduces_the_official_logits(owl2_parity_folder, owl2_files):
    import torch

    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig
    from lmmiqa.images import pad_to_square
    from lmmiqa.levels import QALIGN_SCALE
    from lmmiqa.types import Prompt

    result = json.loads((owl2_files["parity"] / "result.json").read_text())
    fixture = torch.load(owl2_files["parity"] / "fixture_tensors.pt")
    config = json.loads((owl2_parity_folder / "config.json").read_text())
    assert config["auto_map"] and config["model_type"] == "mplug_owl2"  # remote code named, never run
    assert (owl2_parity_folder / "pytorch_model.bin.index.json").is_file()
    backend = TransformersBackend(TransformersConfig(model=str(owl2_parity_folder), device="cpu", dtype="float32",
                                                     max_batch_tokens=0))
    assert type(backend.model).__module__ == "lmmiqa.families.mplug_owl2.modeling"
    assert backend.family.model_type == "mplug_owl2" and backend.describe()["pixel_budget"] == "model"
    rng = np.random.default_rng(0)
    from PIL import Image

    image = Image.fromarray(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8))
    prompt = Prompt.simple([QUESTION, pad_to_square(image)], answer_prefix=PREFIX)
    text = backend._render([prompt])[0][0]
    assert text == result["prompt"]
    inputs = backend.encode([prompt])
    assert _collapse(inputs["input_ids"][0].tolist()) == result["input_ids"][0]
    assert int((inputs["input_ids"] == -200).sum()) == 65
    pixels = inputs["pixel_values"].float().numpy()
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == result["pixel_values_sha256"]
    logits = backend.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float().detach()
    np.testing.assert_allclose(logits.numpy(), fixture["logits_last_full"].numpy(), atol=1e-4)
    # the level words resolve in context to the official ids (tokenizer(word).input_ids[1])
    cands = QALIGN_SCALE.candidates(PREFIX)
    ids = backend.level_token_ids([prompt], cands)[0]
    assert ids == list(reversed(result["preferential_ids_"]))  # bad..excellent vs excellent..bad
    lp = backend.level_logprobs([prompt], cands)[0]
    ref = np.array(result["logits_pref"][0])[::-1]
    ref_lp = ref - torch.logsumexp(fixture["logits_last_full"][0].double(), 0).item()
    np.testing.assert_allclose(lp, ref_lp, atol=1e-4)
    probs = np.exp(lp - lp.max()) / np.exp(lp - lp.max()).sum()
    assert float(probs @ np.arange(1, 6)) == pytest.approx(result["score"], abs=1e-4)


def test_prompt_pieces_tokenize_as_transformers_4_36(owl2_parity_folder, official_fixture):
    from lmmiqa.families.mplug_owl2.processing import MPLUGOwl2Processor

    processor = MPLUGOwl2Processor.from_pretrained(str(owl2_parity_folder))
    reference = official_fixture("official_tokenizer_436.json")
    assert len(reference) == 13
    for text, ids in reference.items():
        assert processor._piece(text, True) == ids, text
