"""The real-file test kit itself (lmmiqa.testing.make_real_file_vlm): a shrunken random-weight model that keeps a
real checkpoint's tokenizer, chat template and processor. Checked against the facts measured with the real
files (../shared/data/hf/README.md): level-word and digit ids, image-token counts at real resolutions."""

from __future__ import annotations

import json
import pathlib

import pytest

from lmmiqa.levels import QALIGN_SCALE, standard_scale
from lmmiqa.prompts import QALIGN_ANSWER_PREFIX, QALIGN_QUESTION
from lmmiqa.testing import REAL_FILE_CHECKPOINTS, make_image, shared_hf_folder
from lmmiqa.types import Prompt

NAMES = tuple(n for n, arch in REAL_FILE_CHECKPOINTS.items() if arch.startswith("qwen"))  # Gemma 3: test_gemma3_real

pytest.importorskip("torch")
pytest.importorskip("transformers")

HF_FILES = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "hf"

#: " bad", " poor", " fair", " good", " excellent" after "The quality of the image is" (README of shared/data/hf)
WORD_IDS = [3873, 7852, 6624, 1661, 9073]
#: "1".."9" after text ending in a space or newline
DIGIT_IDS = list(range(16, 25))
#: image tokens with the published min/max pixels, per checkpoint
IMAGE_TOKENS = {
    "Qwen2.5-VL-7B-Instruct": {(448, 448): 256, (1024, 768): 999, (4000, 3000): 15301},
    "Qwen3-VL-8B-Instruct": {(448, 448): 196, (1024, 768): 768, (4000, 3000): 11750},
}
#: published text sizes and vocabularies (config.json of each checkpoint)
PUBLISHED = {"Qwen2.5-VL-7B-Instruct": (3584, 152064), "Qwen3-VL-8B-Instruct": (4096, 151936)}
#: tokenizer length: the 151,643 BPE tokens plus the added tokens (Qwen3-VL adds <think>, </think>, ...)
TOKENIZER_LEN = {"Qwen2.5-VL-7B-Instruct": 151665, "Qwen3-VL-8B-Instruct": 151669}


@pytest.mark.parametrize("name", NAMES)
def test_shrunk_model_keeps_the_real_vocabulary_special_ids_and_files(name, real_file_model):
    import transformers

    path = real_file_model(name)
    cfg = transformers.AutoConfig.from_pretrained(path)
    text = cfg.text_config
    hidden, vocab = PUBLISHED[name]
    assert text.hidden_size == 64 != hidden and text.num_hidden_layers == 2 and cfg.vision_config.depth == 2
    assert text.vocab_size == vocab  # every real token id has a row
    assert (cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == (151655, 151652, 151653)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    assert len(tok) == TOKENIZER_LEN[name] and tok.convert_tokens_to_ids("<|im_start|>") == 151644
    # the non-weight files are the real ones, byte for byte
    real = shared_hf_folder(name, HF_FILES)
    assert real is not None
    for fname in ("preprocessor_config.json", "chat_template.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        if (real / fname).exists():
            assert (path / fname).read_bytes() == (real / fname).read_bytes(), fname
    assert json.loads((path / "config.json").read_text())["text_config"]["hidden_size"] == 64


@pytest.mark.parametrize("name", NAMES)
def test_level_words_and_digits_resolve_to_the_real_ids(name, real_backend):
    backend = real_backend(name)
    qalign = Prompt.simple([make_image(56, 56), QALIGN_QUESTION], answer_prefix=QALIGN_ANSWER_PREFIX)
    (ids,) = backend.level_token_ids([qalign], QALIGN_SCALE.candidates(QALIGN_ANSWER_PREFIX))
    assert ids == WORD_IDS
    # the digits follow the generation prompt ("<|im_start|>assistant\n") directly: no leading space
    digits = Prompt.simple([make_image(56, 56), "Score 1 to 9."], system="Rate.")
    (ids,) = backend.level_token_ids([digits], standard_scale(9).candidates(""))
    assert ids == DIGIT_IDS
    assert backend.tokenizer.convert_ids_to_tokens(WORD_IDS) == ["Ġbad", "Ġpoor", "Ġfair", "Ġgood", "Ġexcellent"]


@pytest.mark.parametrize("name", NAMES)
def test_image_token_counts_at_real_resolutions_equal_the_published_ones(name, real_file_model):
    """Counted in the processor output of the backend's own encode() (the expanded <|image_pad|> tokens, checked
    against image_grid_thw), without running the model: the 4000x3000 image only goes through the processor.
    With ``max_pixels="model"`` (the checkpoint's own limits) the counts are the published ones; the default
    scoring budget (1024x1024) leaves the two smaller sizes alone and caps the camera original."""
    import lmmiqa

    path = str(real_file_model(name))
    capped = {"Qwen2.5-VL-7B-Instruct": 1302, "Qwen3-VL-8B-Instruct": 972}[name]
    for budget, table in (("model", IMAGE_TOKENS[name]), (None, {**IMAGE_TOKENS[name], (4000, 3000): capped})):
        opts = {} if budget is None else {"max_pixels": budget}
        backend = lmmiqa.create_scorer("q-align", model=path, device="cpu", **opts).backend
        image_token = backend.model.config.image_token_id
        merge = backend.processor.image_processor.merge_size
        for (w, h), expected in table.items():
            image = make_image(w // 8, h // 8, seed=w).resize((w, h))  # real size, cheap to draw
            inputs = backend.encode([Prompt.simple([image, "How is it?"])])
            n_pad = int((inputs["input_ids"] == image_token).sum())
            t, gh, gw = (int(x) for x in inputs["image_grid_thw"][0])
            assert n_pad == t * gh * gw // merge**2 == expected, (budget, w, h)
