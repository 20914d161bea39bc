"""mPLUG-Owl2's prompt format and preprocessing (what the transformers backend calls on a processor).

* **Conversation format** — no chat template: ``USER: <content><sep>ASSISTANT:`` with the content's parts joined by
  ``"\\n"`` and each image written ``<|image|>``; ``<sep>`` is ``"\\n"`` (Q-Align's scorer and one-align's
  ``score()``: ``USER: How would you rate the quality of this image?\\n<|image|>\\nASSISTANT: The quality of the
  image is``) or ``" "`` (the conversation templates ``mplug_owl2``/``vicuna_v1``, used by Q-Scorer's
  ``iqa_eval.py``). A system message, when given, opens the text followed by a space (``vicuna_v1``); earlier
  assistant turns end with ``</s>``. The answer prefix joins ``ASSISTANT:`` with a space (:meth:`join_answer_prefix`).
* **Tokenization** — as the published ``tokenizer_image_token``: the text is cut at each ``<|image|>``, every piece
  is tokenized on its own by the LLaMA-2 SentencePiece tokenizer (so the piece after an image starts with its own
  ``▁``), BOS is kept on the first piece only, and each image becomes ``num_image_tokens`` (65) placeholder ids
  (``image_token_id``, -200) that the model replaces with the image's features. The pieces are encoded by the
  ``sentencepiece`` library itself from the checkpoint's ``tokenizer.model`` with the rules of the published code's
  tokenizer (transformers 4.3x ``LlamaTokenizer``, ``legacy=False``: the start of a text gets SentencePiece's ``▁``
  prefix, text right after a special token does not), because transformers 5's BPE conversion of that model segments
  some whitespace differently (``" ASSISTANT"`` → ``▁A SS…`` instead of ``▁ ▁A SS…``). Without a
  ``tokenizer.model`` the checkpoint's own tokenizer is used.
* **Images** — the checkpoint's CLIP preprocessing read from its ``preprocessor_config.json`` as it is (the old
  ``CLIPFeatureExtractor`` layout: 448 shortest edge, bicubic, centre crop 448, CLIP mean/std), run by transformers'
  PIL CLIP image processor (the same pixels as the published code). Padding to a square with the CLIP mean colour
  (Q-Align's ``expand2square``) is the caller's choice: methods follow :attr:`lmmiqa.families.PromptConventions.
  pad_to_square` (see :func:`lmmiqa.images.pad_to_square`). The input size is fixed, so a pixel budget does not
  apply (``fixed_image_resolution``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from lmmiqa.families.mplug_owl2.configuration import ABSTRACTOR_DEFAULTS, IMAGE_TOKEN_INDEX

IMAGE_TOKEN = "<|image|>"
USER, ASSISTANT = "USER", "ASSISTANT"
#: separators between the user turn and ``ASSISTANT:``: Q-Align's scorer ("\n") and the conversation templates (" ")
SEPARATORS = ("\n", " ")
EOS_TEXT = "</s>"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content or []:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        elif isinstance(part, dict) and part.get("type") in ("image", "image_url"):
            parts.append(IMAGE_TOKEN)
        else:
            raise ValueError(f"mPLUG-Owl2 prompts hold text and images, got a {part!r} part")
    return "\n".join(parts)


def render_conversation(conversation: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True,
                        separator: str = "\n") -> str:
    """The text of a conversation in mPLUG-Owl2's format (see the module docstring).

    Args:
        conversation: ``[{"role": "system"|"user"|"assistant", "content": str | [parts]}]``; an image part is
            ``{"type": "image"}`` and renders as ``<|image|>``.
        add_generation_prompt: end with ``ASSISTANT:`` (the model's turn).
        separator: after each user turn, ``"\\n"`` (Q-Align) or ``" "`` (conversation templates).
    """
    if separator not in SEPARATORS:
        raise ValueError(f"separator must be one of {SEPARATORS!r}, got {separator!r}")
    text = ""
    for msg in conversation:
        role = msg.get("role")
        body = _content_text(msg.get("content"))
        if role == "system":
            text += body + " " if body else ""
        elif role == "user":
            text += f"{USER}: {body}{separator}"
        elif role == "assistant":
            text += f"{ASSISTANT}: {body}{EOS_TEXT}"
        else:
            raise ValueError(f"unknown role {role!r}; known: system, user, assistant")
    if add_generation_prompt:
        text += f"{ASSISTANT}:"
    return text


def join_answer_prefix(rendered: str, prefix: str) -> str:
    """``rendered`` (ending ``ASSISTANT:``) continued by the answer prefix, with the space the format puts after
    the colon (``ASSISTANT: The quality of the image is``)."""
    if prefix and rendered.endswith(":") and not prefix[0].isspace():
        return f"{rendered} {prefix}"
    return rendered + prefix


def clip_image_processor(name_or_path: str, **kwargs: Any) -> Any:
    """The checkpoint's CLIP image processor from its ``preprocessor_config.json`` as it is, on transformers' PIL
    backend where it exists (the pixels of the published code, with or without torchvision installed)."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls.from_pretrained(name_or_path, **kwargs)


class SentencePieceText:
    """``tokenizer(text).input_ids`` without BOS as the published code's tokenizer computes it (transformers 4.3x
    ``LlamaTokenizer`` with ``legacy=False``), from the SentencePiece model and the tokenizer's added tokens.

    The text is split at added/special tokens (``</s>``, ``<score1>`` ...), which map to their ids (a token added
    with ``lstrip``/``rstrip`` absorbs the whitespace before/after it); the first text segment, at the start of the
    text, is encoded with SentencePiece's ``▁`` prefix; a segment after a special token without it (encoded after an
    ``<unk>`` marker that is then removed, as that tokenizer does).
    """

    def __init__(self, model_file: str, tokenizer: Any) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.tokenizer = tokenizer
        self.unk = str(getattr(tokenizer, "unk_token", None) or "<unk>")
        self.unk_length = len(self.sp.encode(self.unk))
        self._specials: tuple[int, list[tuple[str, int]]] | None = None
        self._strip: dict[int, tuple[bool, bool]] = {}

    def specials(self) -> list[tuple[str, int]]:
        """(text, id) of the tokenizer's added tokens, longest first (recomputed when tokens are added)."""
        n = len(self.tokenizer)
        if self._specials is None or self._specials[0] != n:
            added = dict(self.tokenizer.get_added_vocab())
            decoder = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
            self._strip = {int(i): (bool(getattr(decoder.get(int(i)), "lstrip", False)),
                                    bool(getattr(decoder.get(int(i)), "rstrip", False))) for i in added.values()}
            self._specials = (n, sorted(((t, int(i)) for t, i in added.items() if t), key=lambda x: -len(x[0])))
        return self._specials[1]

    def __call__(self, text: str) -> list[int]:
        text = text.replace("\u2581", " ")
        ids: list[int] = []
        start = True
        pos = 0
        specials = self.specials()
        while pos <= len(text):
            nxt, found = len(text), None
            for tok_text, tok_id in specials:
                i = text.find(tok_text, pos)
                if i >= 0 and (i < nxt or (i == nxt and found is None)):
                    nxt, found = i, (tok_text, tok_id)
            segment = text[pos:nxt]
            if found is not None and self._strip.get(found[1], (False, False))[0]:
                segment = segment.rstrip()  # an lstrip token absorbs the whitespace before it
            if not start and ids and self._strip.get(ids[-1], (False, False))[1]:
                segment = segment.lstrip()  # an rstrip token absorbs the whitespace after it
            if segment:
                if start:
                    ids.extend(self.sp.encode(segment))
                else:
                    ids.extend(self.sp.encode(self.unk + segment)[self.unk_length :])
            if found is None:
                break
            ids.append(found[1])
            start = False
            pos = nxt + len(found[0])
        return ids


class _Counts:
    def __init__(self, num_image_tokens: list[int]) -> None:
        self.num_image_tokens = num_image_tokens
        self.num_image_patches = [1] * len(num_image_tokens)


class MPLUGOwl2Processor:
    """Tokenizer + CLIP image processor + mPLUG-Owl2's prompt format (the family's processor).

    Attributes:
        tokenizer: the checkpoint's LLaMA-2 SentencePiece tokenizer.
        image_processor: its CLIP image processor.
        num_image_tokens: positions per image (the abstractor's queries + 1).
        image_token_id: placeholder id of image positions (-200).
        separator: between the user turn and ``ASSISTANT:`` ("\\n", one-align's scorer format).
        fixed_image_resolution: True: every image is resized to 448², so lmmiqa's pixel budget does not apply
            (:func:`lmmiqa.backends.hf_processor.set_pixel_budget`).
    """

    image_token = IMAGE_TOKEN
    fixed_image_resolution = True

    def __init__(self, tokenizer: Any, image_processor: Any, *, num_image_tokens: int | None = None,
                 image_token_id: int = IMAGE_TOKEN_INDEX, separator: str = "\n") -> None:
        if separator not in SEPARATORS:
            raise ValueError(f"separator must be one of {SEPARATORS!r}, got {separator!r}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.num_image_tokens = int(num_image_tokens or ABSTRACTOR_DEFAULTS["num_learnable_queries"] + 1)
        self.image_token_id = int(image_token_id)
        self.separator = separator
        model_file = getattr(tokenizer, "vocab_file", None)
        self.sentencepiece: SentencePieceText | None = None
        if model_file and os.path.isfile(str(model_file)) and str(model_file).endswith(".model"):
            try:
                self.sentencepiece = SentencePieceText(str(model_file), tokenizer)
            except ImportError:  # pragma: no cover - sentencepiece comes with the hf extra
                self.sentencepiece = None

    # ---------------------------------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], **kwargs: Any) -> MPLUGOwl2Processor:
        """Load the tokenizer and ``preprocessor_config.json`` of a checkpoint (``kwargs``: hub options such as
        ``local_files_only``, ``revision``, ``cache_dir``; ``separator=``)."""
        from transformers import AutoTokenizer

        from lmmiqa.families.mplug_owl2 import FAMILY
        from lmmiqa.hub import read_checkpoint_json

        FAMILY.register()  # so that nothing asks about the config.json's remote code
        separator = kwargs.pop("separator", "\n")
        kwargs.pop("trust_remote_code", None)
        name = os.fspath(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        image_processor = clip_image_processor(name, **kwargs)
        config = read_checkpoint_json(name, "config.json", **kwargs) or {}
        from lmmiqa.families.mplug_owl2.configuration import MPLUGOwl2Config

        owl = MPLUGOwl2Config(**{k: v for k, v in config.items() if k in ("visual_config", "image_token_index")})
        return cls(tokenizer, image_processor, num_image_tokens=owl.num_image_tokens,
                   image_token_id=owl.image_token_index, separator=separator)

    def save_pretrained(self, path: str | os.PathLike[str], **kwargs: Any) -> list[str]:
        """Write the tokenizer files and ``preprocessor_config.json`` (CLIP's, loadable by the published code)."""
        os.makedirs(path, exist_ok=True)
        files = list(self.tokenizer.save_pretrained(path, **kwargs))
        model_file = getattr(self.tokenizer, "vocab_file", None)
        target = os.path.join(os.fspath(path), "tokenizer.model")
        if model_file and os.path.isfile(str(model_file)) and not os.path.exists(target):
            import shutil  # the SentencePiece model itself: exact tokenization after a reload (see SentencePieceText)

            shutil.copy(str(model_file), target)
            files.append(target)
        self.image_processor.save_pretrained(path)
        pre = os.path.join(os.fspath(path), "preprocessor_config.json")
        with open(pre, encoding="utf-8") as fh:
            data = json.load(fh)
        data["image_processor_type"] = "CLIPImageProcessor"
        with open(pre, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        return [*files, pre]

    # ---------------------------------------------------------------------------------------- text
    def apply_chat_template(self, conversation: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False, **kwargs: Any) -> Any:
        """The conversation in mPLUG-Owl2's format (no Jinja template; see :func:`render_conversation`)."""
        text = render_conversation(conversation, add_generation_prompt=add_generation_prompt,
                                   separator=kwargs.get("separator", self.separator))
        if tokenize:
            return self._ids(text, True, placeholders=1)
        return text

    @staticmethod
    def join_answer_prefix(rendered: str, prefix: str) -> str:
        """See :func:`join_answer_prefix`."""
        return join_answer_prefix(rendered, prefix)

    def _ids(self, text: str, add_special_tokens: bool, *, placeholders: int | None = None) -> list[int]:
        """Token ids as the published ``tokenizer_image_token``: pieces between images tokenized alone, BOS kept on
        the first piece only, ``placeholders`` (default ``num_image_tokens``) image ids per image."""
        per_image = self.num_image_tokens if placeholders is None else placeholders
        tok = self.tokenizer
        bos = tok.bos_token_id
        pieces = [self._piece(p, add_special_tokens) if p else [] for p in text.split(IMAGE_TOKEN)]
        strip = 1 if pieces[0] and bos is not None and pieces[0][0] == bos else 0
        ids: list[int] = [bos] if strip else []
        for i, piece in enumerate(pieces):
            if i:
                ids.extend([self.image_token_id] * per_image)
            ids.extend(piece[strip:])
        return ids

    def _piece(self, text: str, add_special_tokens: bool) -> list[int]:
        """``tokenizer(text).input_ids`` of the published code (BOS first when ``add_special_tokens``)."""
        if self.sentencepiece is None:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        head = [self._bos] if add_special_tokens and self._bos is not None else []
        return head + self.sentencepiece(text)

    @property
    def _bos(self) -> int | None:
        """BOS when the tokenizer adds one with its special tokens (asked of the tokenizer itself: transformers 5
        reloads a saved LLaMA tokenizer with ``add_bos_token`` False although it still adds BOS)."""
        if not hasattr(self, "_bos_cache"):
            bos = self.tokenizer.bos_token_id
            ids = self.tokenizer("a", add_special_tokens=True)["input_ids"]
            self._bos_cache = bos if bos is not None and ids[:1] == [bos] else None
        return self._bos_cache

    def num_text_tokens(self, text: str) -> int:
        """Tokens of a rendered prompt counting each image as one token (the transformers backend adds each
        image's count from :meth:`_get_num_multimodal_tokens`)."""
        return len(self._ids(text, True, placeholders=1))

    # ---------------------------------------------------------------------------------------- batch
    def __call__(self, text: str | Sequence[str] | None = None, images: Any = None, padding: bool | str = True,
                 return_tensors: str | None = "pt", add_special_tokens: bool = True, **kwargs: Any) -> Any:
        """``input_ids``, ``attention_mask`` (padded on the tokenizer's ``padding_side``) and ``pixel_values``.

        ``images`` is a flat list in the order of the ``<|image|>`` markers of all texts, or one list per text.
        """
        from transformers import BatchFeature

        if text is None:
            raise ValueError("mPLUG-Owl2's processor needs text (use image_processor for images alone)")
        texts = [text] if isinstance(text, str) else list(text)
        flat: list[Any] = []
        if images is not None:
            items = images if isinstance(images, (list, tuple)) else [images]
            for it in items:
                flat.extend(it if isinstance(it, (list, tuple)) else [it])
        wanted = sum(t.count(IMAGE_TOKEN) for t in texts)
        if wanted != len(flat):
            raise ValueError(f"the texts hold {wanted} {IMAGE_TOKEN} marker(s) but {len(flat)} image(s) were given")
        rows = [self._ids(t, add_special_tokens) for t in texts]
        longest = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        ids, mask = [], []
        for r in rows:
            fill = longest - len(r)
            if fill and not padding:
                raise ValueError("texts of different lengths need padding=True")
            pad, ones = [pad_id] * fill, [1] * len(r)
            ids.append(pad + r if left else r + pad)
            mask.append([0] * fill + ones if left else ones + [0] * fill)
        data: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if flat:
            data["pixel_values"] = self.image_processor(flat, return_tensors="np")["pixel_values"]
        if return_tensors == "pt":
            import numpy as np
            import torch

            data = {k: torch.from_numpy(np.asarray(v)) if k == "pixel_values" else torch.tensor(v, dtype=torch.long)
                    for k, v in data.items()}
        elif return_tensors == "np":
            import numpy as np

            data = {k: np.asarray(v) for k, v in data.items()}
        return BatchFeature(data=data)

    def _get_num_multimodal_tokens(self, image_sizes: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> Any:
        """Positions each image takes in the language model: always :attr:`num_image_tokens` (fixed 448² input)."""
        return _Counts([self.num_image_tokens] * len(image_sizes or []))

    # ---------------------------------------------------------------------------------------- decoding
    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)


__all__ = [
    "IMAGE_TOKEN",
    "MPLUGOwl2Processor",
    "clip_image_processor",
    "join_answer_prefix",
    "render_conversation",
]
