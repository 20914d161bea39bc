"""mPLUG-Owl3's processor: its chat format, ``<|image|>`` placeholders, tiling and ``media_offset``.

The conversation format (the published ``processing_mplugowl3.py``, ``prompt_style="chatml"``, inference mode)::

    <|im_start|>system\\n{system}<|im_end|>          (an empty system turn when the conversation has none)
    \\n<|im_start|>user\\n{user}<|im_end|>
    \\n<|im_start|>assistant\\n                        (the generation prompt)

An earlier assistant turn is ``\\n<|im_start|>assistant\\n{text}<|im_end|><|endoftext|>``. In a message whose content
is a list of parts, an image part is the placeholder ``<|image|>`` and parts are joined by newlines (lmmiqa's
decision, following the model card's example ``"<|image|>\\nDescribe this image."``).

:meth:`MplugOwl3Processor.__call__` then does what the published processor does: each image becomes its tiles and
global view (:mod:`.image_processing`) and its placeholder the cut prompt with one placeholder per view; the text is
tokenized piece by piece between placeholders, each placeholder on its own (so no BPE merge crosses one), and
``media_offset`` records where each view's placeholder starts. Prompts of a batch are left-padded; their views
are concatenated in prompt order. The published code handles one conversation at a time, and with several images
in one prompt it gives the second image the cut prompt of the first image's global view (1×1); lmmiqa gives every
image its own grid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError, ModelLoadError
from lmmiqa.families.mplug_owl3.image_processing import (
    IMAGE_SIZE,
    IMAGE_TOKEN,
    MplugOwl3ImageProcessor,
    cut_prompt,
)

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
#: ``media_offset`` second-column value of a prompt without images (the published processor's).
NO_MEDIA = -1000000
_SPLIT = re.compile(f"({re.escape(IMAGE_TOKEN)})")


def render_conversation(conversation: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """A conversation (``[{"role", "content"}]``, content a string or a list of ``{"type": "text"|"image"}``
    parts) in mPLUG-Owl3's chat format (module docstring)."""
    out: list[str] = []
    for i, message in enumerate(conversation):
        role = message.get("role")
        content = _content_text(message.get("content", ""))
        if i == 0 and role != "system":
            out.append(f"{IM_START}system\n{IM_END}")
        if role == "system":
            out.append(f"{IM_START}system\n{content}{IM_END}")
        elif role == "user":
            out.append(f"\n{IM_START}user\n{content}{IM_END}")
        elif role == "assistant":
            out.append(f"\n{IM_START}assistant\n{content}{IM_END}{END_OF_TEXT}")
        else:
            raise ConfigError(f"unknown message role {role!r}; mPLUG-Owl3 knows system, user, assistant")
    if not conversation:
        out.append(f"{IM_START}system\n{IM_END}")
    if add_generation_prompt:
        out.append(f"\n{IM_START}assistant\n")
    return "".join(out)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content or []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(str(part.get("text", "")))
        elif kind == "image":
            parts.append(IMAGE_TOKEN)
        else:
            raise ConfigError(f"unsupported message part {part!r}; mPLUG-Owl3 takes text and image parts")
    return "\n".join(parts)


class MplugOwl3Processor:
    """Tokenizer + image processor of an mPLUG-Owl3 checkpoint, with the interface lmmiqa's backend uses.

    Attributes:
        tokenizer: the checkpoint's (Qwen2) tokenizer.
        image_processor: :class:`~.image_processing.MplugOwl3ImageProcessor`.
        patches_per_view: vision features per view (``(image_size // patch_size)²``, 729 for the published model).
        image_token: the placeholder text ``"<|image|>"``; ``image_token_id`` is None because it is several
            tokens (see :mod:`.tokenizer`).
        fixed_image_resolution: True: every image becomes 5-7 views of 384² whatever its size, so lmmiqa's pixel
            budget (``max_pixels``) does not apply (:func:`lmmiqa.backends.hf_processor.set_pixel_budget`).
    """

    image_token = IMAGE_TOKEN
    image_token_id = None
    fixed_image_resolution = True

    def __init__(self, tokenizer: Any, image_processor: MplugOwl3ImageProcessor | None = None, patch_size: int = 14) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor or MplugOwl3ImageProcessor()
        self.patch_size = int(patch_size)
        self.patches_per_view = (self.image_processor.image_size // self.patch_size) ** 2
        self._pieces = lru_cache(maxsize=4096)(self._tokenize_piece)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> MplugOwl3Processor:
        """The processor of a checkpoint folder or hub id: its tokenizer files and, from ``config.json``, the vision
        tower's input size and patch size (the published processor hard-codes 384, the published config's)."""
        from lmmiqa.families import read_config
        from lmmiqa.families.mplug_owl3.tokenizer import load_tokenizer

        hub = {k: v for k, v in kwargs.items() if k in ("local_files_only", "revision", "cache_dir", "token")}
        config = read_config(name_or_path, **hub) or {}
        vision = config.get("vision_config") or {}
        try:
            image_size = int(vision.get("image_size", IMAGE_SIZE))
            patch_size = int(vision.get("patch_size", 14))
        except (TypeError, ValueError) as err:
            raise ModelLoadError(f"{name_or_path!r}: bad vision_config in config.json ({err})") from err
        return cls(load_tokenizer(name_or_path, **hub), MplugOwl3ImageProcessor(image_size), patch_size)

    def save_pretrained(self, folder: str | os.PathLike[str], **kwargs: Any) -> None:
        """Save the tokenizer files (the published layout has no processor file; the image size is in config.json)."""
        self.tokenizer.save_pretrained(str(folder), **kwargs)

    # -- text ---------------------------------------------------------------------------------------------------
    def apply_chat_template(
        self, conversation: Sequence[dict[str, Any]], add_generation_prompt: bool = True, tokenize: bool = False, **kwargs: Any
    ) -> Any:
        """The conversation in mPLUG-Owl3's format (:func:`render_conversation`); ``tokenize=True`` returns ids
        (text only: images need :meth:`__call__`)."""
        text = render_conversation(conversation, add_generation_prompt)
        if tokenize:
            return self._encode_text(text, [])[0]
        return text

    def _tokenize_piece(self, piece: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(piece, add_special_tokens=False)["input_ids"])

    def _encode_text(self, text: str, grids: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Token ids of ``text`` with its placeholders expanded by ``grids`` (one per placeholder) and the index of
        the first token of every view placeholder."""
        pieces = _SPLIT.split(text)
        n_placeholders = sum(1 for p in pieces if p == IMAGE_TOKEN)
        if n_placeholders != len(grids):
            raise ConfigError(f"the prompt has {n_placeholders} {IMAGE_TOKEN} placeholders for {len(grids)} images")
        expanded: list[str] = []
        k = 0
        for piece in pieces:
            if piece == IMAGE_TOKEN:
                expanded.append(cut_prompt(*grids[k]))
                k += 1
            else:
                expanded.append(piece)
        ids: list[int] = []
        starts: list[int] = []
        for piece in _SPLIT.split("".join(expanded)):
            if not piece:
                continue
            if piece == IMAGE_TOKEN:
                starts.append(len(ids))
            ids.extend(self._pieces(piece))
        return ids, starts

    # -- the processor call -------------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Any = None,
        padding: bool | str = True,
        return_tensors: str | None = "pt",
        add_special_tokens: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Model inputs for rendered prompts: ``input_ids``, ``attention_mask`` (left-padded), ``pixel_values``
        (every view of every image, in prompt order; absent without images) and ``media_offset``.

        Args:
            text: one rendered prompt or a list (with one ``<|image|>`` per image).
            images: PIL images: a list per prompt, or one flat list in placeholder order (or None).
            padding: pad to the longest prompt (left); False requires equal lengths.
            return_tensors: ``"pt"``, ``"np"`` or None (lists).
            add_special_tokens: ignored (mPLUG-Owl3's tokenizer adds none).
        """
        from transformers import BatchFeature

        if text is None:
            raise ConfigError("the mPLUG-Owl3 processor needs text (rendered prompts)")
        texts = [text] if isinstance(text, str) else list(text)
        per_prompt = self._images_per_prompt(texts, images)
        rows: list[list[int]] = []
        starts_all: list[list[int]] = []
        views: list[np.ndarray] = []
        n_views: list[int] = []
        for t, ims in zip(texts, per_prompt):
            processed = [self.image_processor.process(im) for im in ims]
            ids, starts = self._encode_text(t, [(p.rows, p.cols) for p in processed])
            rows.append(ids)
            starts_all.append(starts)
            views.extend(p.views for p in processed)
            n_views.append(sum(p.views.shape[0] for p in processed))
        longest = max((len(r) for r in rows), default=0)
        if not padding and len({len(r) for r in rows}) > 1:
            raise ConfigError("prompts of different lengths need padding=True")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        media = np.zeros((len(rows), longest, 2), dtype=np.int64)
        before = 0
        for b, (ids, starts) in enumerate(zip(rows, starts_all)):
            pad = longest - len(ids)
            input_ids[b, pad:] = ids
            mask[b, pad:] = 1
            media[b, :, 0] = before
            if starts:
                positions = np.arange(len(ids))
                seen = (positions[:, None] > np.asarray(starts)[None, :]).sum(axis=1)
                media[b, :, 1] = before
                media[b, pad:, 1] = before + seen
            else:
                media[b, :, 1] = NO_MEDIA
            before += n_views[b]
        data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "media_offset": media}
        if views:
            data["pixel_values"] = np.concatenate(views, axis=0)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _images_per_prompt(texts: list[str], images: Any) -> list[list[Any]]:
        counts = [t.count(IMAGE_TOKEN) for t in texts]
        if images is None:
            images = []
        if not isinstance(images, (list, tuple)):
            images = [images]
        if images and all(isinstance(x, (list, tuple)) for x in images):
            if len(images) != len(texts):
                raise ConfigError(f"{len(images)} image lists for {len(texts)} prompts")
            out = [list(x) for x in images]
        else:
            flat = list(images)
            if len(flat) != sum(counts):
                raise ConfigError(f"{len(flat)} images for {sum(counts)} {IMAGE_TOKEN} placeholders")
            out, k = [], 0
            for c in counts:
                out.append(flat[k : k + c])
                k += c
        for i, (c, ims) in enumerate(zip(counts, out)):
            if c != len(ims):
                raise ConfigError(f"prompt {i} has {c} {IMAGE_TOKEN} placeholders for {len(ims)} images")
        return out

    # -- counts for token-budget batching ----------------------------------------------------------------------
    def _get_num_multimodal_tokens(self, image_sizes: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> Any:
        """What each image of size ``(height, width)`` costs, counted in positions: its views' vision features
        (``views × patches_per_view``; they are cross-attended by the hyper layers, not part of the token sequence)
        plus the tokens its cut prompt adds beyond its one placeholder (counted as one token by the caller)."""
        from transformers.processing_utils import MultiModalData

        tokens: list[int] = []
        patches: list[int] = []
        placeholder = len(self._pieces(IMAGE_TOKEN))
        for h, w in image_sizes or []:
            rows, cols = self.image_processor.grid(int(w), int(h))
            views = rows * cols + 1
            text_tokens = sum(len(self._pieces(p)) for p in _SPLIT.split(cut_prompt(rows, cols)) if p)
            tokens.append(views * self.patches_per_view + text_tokens - placeholder + 1)
            patches.append(views)
        return MultiModalData(num_image_tokens=tokens, num_image_patches=patches)

    # -- decoding ---------------------------------------------------------------------------------------------
    def batch_decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.decode(*args, **kwargs)


__all__ = ["NO_MEDIA", "MplugOwl3Processor", "render_conversation"]
