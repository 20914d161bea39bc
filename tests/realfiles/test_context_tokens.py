"""Level tokens are resolved in the context the model reads (the end of the rendered generation prompt plus the
answer prefix), and encode() gives the model one BOS, on copies of the real-file models with changed templates
and tokenizers."""

from __future__ import annotations

import json
import shutil

import pytest

import lmmiqa
from lmmiqa.errors import TokenizationError
from lmmiqa.levels import QALIGN_SCALE, candidates_in_context, leading_space, standard_scale
from lmmiqa.prompts import QALIGN_ANSWER_PREFIX
from lmmiqa.testing import force_token, make_image
from lmmiqa.types import Prompt

pytest.importorskip("torch")
pytest.importorskip("transformers")

NAME = "Qwen3-VL-8B-Instruct"

#: A plain-text chat template whose generation prompt ends without whitespace, like many base/older models.
PLAIN_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}System: {% else -%}"
    "{{- 'User: ' if message['role'] == 'user' else 'Assistant: ' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}{%- else -%}"
    "{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'text' in c -%}{{- c['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)


def _copy(src, dst, template=None):
    """A copy of a model folder (weights linked) with another chat template."""
    dst.mkdir()
    for item in src.iterdir():
        if item.suffix == ".safetensors":
            (dst / item.name).symlink_to(item)
        else:
            shutil.copyfile(item, dst / item.name)
    if template is not None:
        for old in ("chat_template.json", "chat_template.jinja"):
            (dst / old).unlink(missing_ok=True)
        (dst / "chat_template.jinja").write_text(template)
    return dst


def _backend(path):
    from lmmiqa.backends.base import create_backend

    return create_backend("transformers", str(path), cache=False, device="cpu", dtype="float32")


def test_leading_space_rule():
    assert leading_space("") == "" and leading_space("assistant\n") == "" and leading_space("is ") == ""
    assert leading_space("Assistant:") == " " and leading_space("is") == " "
    assert candidates_in_context(["1", "2"], "Assistant:") == [" 1", " 2"]
    assert candidates_in_context([" good"], "assistant\n") == ["good"]
    assert candidates_in_context([" good"], "The quality is") == [" good"]
    assert QALIGN_SCALE.candidates("<|im_start|>assistant\nThe quality is") == [" bad", " poor", " fair", " good",
                                                                               " excellent"]


def test_the_level_context_starts_at_the_last_special_token(real_backend):
    backend = real_backend(NAME)
    text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nThe quality of the image is"
    assert backend.level_context(text) == "<|im_start|>assistant\nThe quality of the image is"
    long = "x" * 1000 + " end:"
    assert backend.level_context(long) == long[-256:]


def test_a_template_ending_without_whitespace_reads_the_spaced_digit_and_fails_loudly_when_it_splits(
    real_file_model, tmp_path
):
    """Qwen's BPE has no " 7" token: after "Assistant:" the model would write "Ġ" then "7", so standard-guided
    (no answer prefix) must fail loudly listing those pieces, not read the id of "7" (which follows a newline)."""
    path = _copy(real_file_model(NAME), tmp_path / "plain", PLAIN_TEMPLATE)
    backend = _backend(path)
    scorer = lmmiqa.create_scorer("standard-guided", model=str(path), device="cpu")
    scorer._backend = backend
    prompt = scorer.build_prompt(make_image(56, 56))
    (text,), _ = backend._render([prompt])
    assert text.endswith("Please evaluate the quality of the image and score in [1, 2, 3, 4, 5, 6, 7].\nAssistant:")
    with pytest.raises(TokenizationError, match=r"' 7' -> 2 tokens \['Ġ', '7'\]"):
        backend.level_token_ids([prompt], standard_scale(7).candidates(""))
    # Q-Align's prefix ends in a non-space: nothing changes, the words are read with their space
    qalign = Prompt.simple([make_image(56, 56), "How?"], answer_prefix=QALIGN_ANSWER_PREFIX)
    assert backend.level_token_ids([qalign], QALIGN_SCALE.candidates(QALIGN_ANSWER_PREFIX)) == [
        [3873, 7852, 6624, 1661, 9073]
    ]


def _merge_spaced_digits(tokenizer):
    """Make " 1" .. " 9" single tokens of ``tokenizer`` (added tokens, matched before BPE; the real embedding has
    spare rows for their ids), like the tokenizers whose pre-tokenizer keeps a space with a digit (GPT-2 style)."""
    from transformers import AddedToken

    tokenizer.add_tokens([AddedToken(f" {d}", normalized=False, special=False) for d in range(1, 10)])
    return {str(d): tokenizer.convert_tokens_to_ids(f" {d}") for d in range(1, 10)}


def test_a_tokenizer_that_merges_the_spaced_digit_reads_it_after_assistant_colon(real_file_model, tmp_path):
    path = _copy(real_file_model(NAME), tmp_path / "merged", PLAIN_TEMPLATE)
    backend = _backend(path)
    spaced = _merge_spaced_digits(backend.tokenizer)
    assert min(spaced.values()) >= 151669 and max(spaced.values()) < backend.model.config.text_config.vocab_size
    assert backend.tokenizer.encode("Assistant: 7", add_special_tokens=False)[-1] == spaced["7"]
    scorer = lmmiqa.create_scorer("standard-guided", model=str(path), device="cpu")
    scorer._backend = backend
    img = make_image(64, 48)
    prompt = scorer.build_prompt(img)
    expected = [spaced[str(d)] for d in range(1, 8)]
    (ids,) = backend.level_token_ids([prompt], standard_scale(7).candidates(""))
    assert ids == expected  # " 1" .. " 7", not the ids 16..22 of "1".."7"
    assert ids != list(range(16, 23))
    with force_token(backend.model, spaced["6"]):
        (r,) = scorer.score([img])
    assert r.score == pytest.approx(6.0, abs=1e-6)


def test_no_second_bos_when_the_template_writes_it(real_file_model, tmp_path):
    """A tokenizer that adds BOS (<|endoftext|> here) and a template that writes it: the model gets one BOS."""
    src = real_file_model(NAME)
    template = json.loads((src / "chat_template.json").read_text())["chat_template"] if (
        src / "chat_template.json"
    ).exists() else (src / "chat_template.jinja").read_text()
    path = _copy(src, tmp_path / "bos", "{{- bos_token -}}" + template)
    backend = _backend(path)
    tok = backend.tokenizer
    tok.bos_token = "<|endoftext|>"
    tok.add_bos_token = True
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok("hi").input_ids[0] == bos  # the tokenizer does add BOS
    prompt = Prompt.simple([make_image(56, 56), "How?"], answer_prefix=QALIGN_ANSWER_PREFIX)
    (text,), _ = backend._render([prompt])
    assert text.startswith("<|endoftext|><|im_start|>")
    ids = backend.encode([prompt])["input_ids"][0].tolist()
    assert ids[0] == bos and ids[1] != bos and ids.count(bos) == 1
    # a template that does not write BOS keeps the tokenizer's own (as transformers' processors do)
    plain = _backend(_copy(src, tmp_path / "nobos"))
    plain.tokenizer.bos_token = "<|endoftext|>"
    plain.tokenizer.add_bos_token = True
    ids = plain.encode([prompt])["input_ids"][0].tolist()
    assert ids[0] == bos and ids[1] == 151644


def test_a_level_that_merges_with_the_context_lists_both_tokenizations(real_backend):
    from lmmiqa.levels import resolve_token_ids

    tok = real_backend(NAME).tokenizer
    # a prefix ending in a space: Qwen's BPE glues the space to the word, so "good" is not a token of its own
    with pytest.raises(TokenizationError, match=r"'good' merges with the end of the context .*"
                       r"the context ends in \['Ġ'\], context \+ candidate in \['Ġgood'\]"):
        resolve_token_ids(tok, ["good"], "The quality of the image is ")
