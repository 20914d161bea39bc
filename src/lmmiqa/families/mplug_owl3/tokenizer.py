"""mPLUG-Owl3's tokenizer: Qwen2's byte-level BPE plus Qwen's special tokens — what is known and what is inferred.

A downloaded mPLUG/mPLUG-Owl3-7B-240728 folder carries its own tokenizer files, and lmmiqa loads those
(:func:`load_tokenizer`). They were not reachable when lmmiqa's implementation was written, so the tokenizer this
module *derives* (for tests, and for a folder without tokenizer files) rests on these facts and inferences:

* **Known**: the BPE is Qwen2's — the checkpoint's ``merges.txt`` is byte-identical to Qwen2's, whose
  ``vocab.json`` has 151,643 entries (ids 0-151642). ``config.json`` names ``bos_token_id`` 151643 and
  ``eos_token_id`` 151645, and the official code stops on ``<|im_end|>`` and ``<|endoftext|>``: Qwen's
  ``<|endoftext|>`` = 151643, ``<|im_start|>`` = 151644, ``<|im_end|>`` = 151645.
* **Inferred**: the embedding has ``vocab_size`` **151,851** rows = 151,643 + 208, exactly the layout of Qwen's
  original tokenizer (Qwen-7B's ``tokenization_qwen.py``: ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` and
  205 ``<|extra_N|>`` tokens, N = 0..204, ids 151646-151850). The derived tokenizer adds exactly those.
* **Inferred**: ``<|image|>`` is *not* a token of its own. The official processor tokenizes each ``<|image|>``
  placeholder separately and marks where it *starts* (``media_offset``), a mechanism built for placeholders of
  several tokens; with the BPE above it is five tokens (``<``, ``|``, ``image``, ``|``, ``>`` = 27, 91, 1805, 91,
  29), which matches token ids of a conversation printed by a third party who ran the checkpoint with its own
  tokenizer (a public script hard-coding ``151644, 8948, 198, 151645, 198, 151644, 872, 198, 27, 91, 1805, 91,
  29, 198, ...``). lmmiqa's processor never relies on it: it finds placeholders in the text and tokenizes them
  with whatever tokenizer the folder has, as the official processor does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from lmmiqa.errors import ModelLoadError

#: Qwen2's BPE vocabulary size (ids 0..151642).
BPE_VOCAB_SIZE = 151643
#: The special tokens appended after the BPE (inferred, see the module docstring), in id order from 151643.
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))
#: Tokens the chat format needs as single tokens in any mPLUG-Owl3 tokenizer.
REQUIRED_SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "vocab.json")


def _tokenizer_config() -> dict[str, Any]:
    decoder = {
        str(BPE_VOCAB_SIZE + i): {
            "content": tok, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True,
        }
        for i, tok in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "add_prefix_space": False,
        "model_max_length": 32768,
    }


def derive_tokenizer(vocab_file: str | os.PathLike[str], merges_file: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Any:
    """mPLUG-Owl3's tokenizer derived from Qwen2's ``vocab.json`` and ``merges.txt`` (module docstring).

    Args:
        vocab_file: Qwen2's ``vocab.json`` (151,643 entries; e.g. from a Qwen2/Qwen2.5-VL checkpoint folder).
        merges_file: Qwen2's ``merges.txt``.
        out: a folder to save the tokenizer files in (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``,
            ``tokenizer.json``), e.g. a checkpoint folder that lacks them; None: not saved.

    Returns:
        A transformers Qwen2 tokenizer with 151,851 entries.
    """
    from transformers import AutoTokenizer

    with open(vocab_file, encoding="utf-8") as fh:
        vocab = json.load(fh)
    if len(vocab) != BPE_VOCAB_SIZE or max(vocab.values()) != BPE_VOCAB_SIZE - 1:
        raise ValueError(f"{vocab_file} is not Qwen2's vocabulary ({len(vocab)} entries, expected {BPE_VOCAB_SIZE})")
    with tempfile.TemporaryDirectory(prefix="lmmiqa-owl3-tok-") as tmp:
        shutil.copyfile(vocab_file, os.path.join(tmp, "vocab.json"))
        shutil.copyfile(merges_file, os.path.join(tmp, "merges.txt"))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
            json.dump(_tokenizer_config(), fh)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    if len(tokenizer) != BPE_VOCAB_SIZE + len(SPECIAL_TOKENS):
        raise RuntimeError(f"derived tokenizer has {len(tokenizer)} entries, expected {BPE_VOCAB_SIZE + len(SPECIAL_TOKENS)}")
    if out is not None:
        os.makedirs(out, exist_ok=True)
        tokenizer.save_pretrained(str(out))
    return tokenizer


def has_tokenizer_files(folder: str | os.PathLike[str]) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES)


def load_tokenizer(name_or_path: str, **hub_kwargs: Any) -> Any:
    """The tokenizer of an mPLUG-Owl3 checkpoint (folder or hub id), loaded as a Qwen2 tokenizer from its own files
    (the checkpoint's ``auto_map``, if any, is ignored). Raises :class:`ModelLoadError` when the folder has none
    (saying how to derive them) or when the chat-format tokens are not single tokens."""
    from transformers import Qwen2Tokenizer

    hub_kwargs.pop("trust_remote_code", None)
    if os.path.isdir(name_or_path) and not has_tokenizer_files(name_or_path):
        raise ModelLoadError(
            f"{name_or_path!r} has no tokenizer files (tokenizer.json or vocab.json + merges.txt). mPLUG-Owl3's "
            "tokenizer is Qwen2's BPE plus Qwen's special tokens: copy the checkpoint's own tokenizer files into the "
            "folder, or derive them from a Qwen2 checkpoint's vocab.json and merges.txt with "
            "lmmiqa.families.mplug_owl3.tokenizer.derive_tokenizer(vocab_json, merges_txt, out=folder)"
        )
    try:
        tokenizer = Qwen2Tokenizer.from_pretrained(name_or_path, **hub_kwargs)
    except Exception as err:
        raise ModelLoadError(f"cannot load the tokenizer of {name_or_path!r}: {type(err).__name__}: {err}") from err
    for tok in REQUIRED_SPECIALS:
        ids = tokenizer.encode(tok, add_special_tokens=False)
        if len(ids) != 1:
            raise ModelLoadError(
                f"the tokenizer of {name_or_path!r} does not know {tok!r} as one token ({ids}): not an mPLUG-Owl3 "
                "(Qwen2) tokenizer"
            )
    return tokenizer


__all__ = ["BPE_VOCAB_SIZE", "REQUIRED_SPECIALS", "SPECIAL_TOKENS", "derive_tokenizer", "has_tokenizer_files", "load_tokenizer"]
