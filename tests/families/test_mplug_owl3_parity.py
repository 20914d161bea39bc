"""lmmiqa's mPLUG-Owl3 against the official mPLUG-Owl3-7B-240728 code on tiny random weights.

The fixture (``fixtures/mplug_owl3_parity.*``, made by ``scripts/owl3_parity_fixture.py`` running the official code
with transformers 4.41.2 in a side environment; see ``fixtures/README.md``) holds, per case, the official
processor's ``input_ids``/``media_offset``/sampled ``pixel_values`` and the official model's last-position final
hidden state and logits. lmmiqa's processor and model, fed the same conversation and image, must reproduce them:
ids and offsets exactly, pixels and logits within 1e-4 (measured: ~1e-6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from owl3_helpers import FIXTURES, tiny_checkpoint

from lmmiqa.testing import make_image

TOL = 1e-4


@pytest.fixture(scope="module")
def official():
    return np.load(FIXTURES / "mplug_owl3_parity.npz"), json.loads((FIXTURES / "mplug_owl3_parity.json").read_text())


@pytest.fixture(scope="module")
def ours():
    from lmmiqa.families.mplug_owl3.processing import MplugOwl3Processor
    from lmmiqa.families.mplug_owl3.tiny import build_tiny_model

    folder = tiny_checkpoint()
    return MplugOwl3Processor.from_pretrained(str(folder)), build_tiny_model()


def _conversation(messages):
    """The fixture's official messages as lmmiqa content parts (image part, newline, text)."""
    conv = []
    for m in messages:
        text = m["content"]
        if text.startswith("<|image|>\n"):
            parts = [{"type": "image"}, {"type": "text", "text": text[len("<|image|>\n") :]}]
        else:
            parts = [{"type": "text", "text": text}]
        conv.append({"role": m["role"], "content": parts})
    return conv


def test_fixture_is_the_recipe_config(official):
    from lmmiqa.families.mplug_owl3.tiny import TINY_CONFIG

    _, meta = official
    assert meta["config"] == json.loads(json.dumps(TINY_CONFIG)) and meta["transformers"] == "4.41.2"


@pytest.mark.parametrize("case", ["landscape_400x300", "portrait_120x420", "square_256", "crop_37x23", "text_only"])
def test_processor_and_logits_match_the_official_code(official, ours, case):
    fx, meta = official
    processor, model = ours
    info = meta["cases"][case]
    images = [make_image(*info["size"], seed=list(meta["cases"]).index(case) + 1)] if info["size"] else []
    text = processor.apply_chat_template(_conversation(info["messages"]))
    enc = processor(text=[text], images=[images] if images else None, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == fx[f"{case}/input_ids"].tolist()
    assert enc["media_offset"][0].tolist() == fx[f"{case}/media_offset"].tolist()
    if images:
        pv = enc["pixel_values"]
        assert list(pv.shape) == info["pixel_shape"]
        flat = pv.reshape(-1).numpy()
        np.testing.assert_allclose(flat[:: meta["pixel_stride"]], fx[f"{case}/pixel_sample"], atol=TOL, rtol=0)
        assert flat.astype(np.float64).sum() == pytest.approx(info["pixel_sum"], abs=1e-2)
    with torch.no_grad():
        out = model(**enc, use_cache=False, output_hidden_states=True)
        full = torch.from_numpy(fx[f"{case}/hidden_last"]) @ model.language_model.lm_head.weight.T
    logits = out.logits[0, -1]
    hidden = out.hidden_states[-1][0, -1]
    np.testing.assert_allclose(hidden.numpy(), fx[f"{case}/hidden_last"], atol=TOL, rtol=0)
    np.testing.assert_allclose(logits[:: meta["logits_stride"]].numpy(), fx[f"{case}/logits_strided"], atol=TOL, rtol=0)
    np.testing.assert_allclose(logits[fx["digit_ids"]].numpy(), fx[f"{case}/logits_digits"], atol=TOL, rtol=0)
    np.testing.assert_allclose(logits[fx[f"{case}/top_ids"]].numpy(), fx[f"{case}/top_values"], atol=TOL, rtol=0)
    # the whole row: the official final state through the (shared, recipe) LM head
    assert float((logits - full).abs().max()) < TOL


def test_greedy_generation_matches_the_official_code(official, ours):
    fx, meta = official
    processor, model = ours
    info = meta["cases"]["landscape_400x300"]
    text = processor.apply_chat_template(_conversation(info["messages"]))
    enc = processor(text=[text], images=[[make_image(400, 300, seed=1)]], return_tensors="pt")
    n = meta["generate_tokens"]
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=151643)
    assert gen[0, enc["input_ids"].shape[1] :].tolist() == fx["landscape_400x300/generated"].tolist()
