"""What a model family provides: the one seam for architectures transformers does not ship.

The published IQA checkpoints (Q-Align's one-align and Q-Scorer's release on mPLUG-Owl2, LLM-IQA's mPLUG-Owl3) exist
only as hub "remote code" written for old transformers. lmmiqa runs them natively: each such family is one folder
``lmmiqa/families/<model_type>/`` (configuration, modeling, processing, prompt rendering) whose ``FAMILY`` object
(:class:`Family`) is listed in :data:`lmmiqa.registry.FAMILIES` under the ``model_type`` its ``config.json`` names.

The contract, so that no family grows special cases across the scorer:

* :meth:`Family.register` makes ``transformers.AutoConfig`` / ``AutoModelForImageTextToText`` build the family's
  classes for that ``model_type`` (the checkpoint's ``auto_map`` is then ignored: no remote code runs), so the
  transformers backend loads it with its ordinary ``from_pretrained`` call (device, dtype,
  ``attn_implementation``, ``local_files_only``, ``revision``). The model class loads the published weight files by
  their own names (sharded ``pytorch_model-*.bin`` + index, or safetensors) and supports
  ``forward(input_ids, attention_mask, pixel_values, ..., use_cache, logits_to_keep, output_hidden_states)`` and
  ``generate``.
* :meth:`Family.load_processor` returns a processor with what the backend calls on every processor: ``tokenizer``,
  ``apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)`` (rendering the family's own
  conversation format, which need not be a Jinja chat template), ``__call__(text=, images=, padding=,
  return_tensors=, add_special_tokens=)``, ``image_token_id`` and, where image token counts are known without
  running the vision encoder, ``_get_num_multimodal_tokens(image_sizes=)`` (for token-budget batching). A
  processor that resizes every image to a fixed input whatever its size (mPLUG-Owl2's 448², mPLUG-Owl3's views)
  sets ``fixed_image_resolution = True``: the backend's pixel budget then leaves its images alone (it would change
  their pixels, not their cost) and does not advise ``--max-pixels`` for large prompts. Optional, for formats that
  are not chat templates (the backend uses them when present, the plain behaviour otherwise):
  ``join_answer_prefix(rendered, prefix)`` (e.g. ``"ASSISTANT:"`` + ``" The quality ..."``: the space the format
  puts after the colon) and ``num_text_tokens(rendered)`` (tokens of a rendered prompt counting each image marker as
  one, when the tokenizer alone would count the marker's text differently).
* :attr:`Family.conventions` says how the family's checkpoints expect prompts (:class:`PromptConventions`); a
  method option left at ``"auto"`` follows them (e.g. one-align reads the question before the image and takes
  images padded to a square).

This module imports no torch or transformers; a family's heavy modules are imported by :meth:`Family.register` and
:meth:`Family.load_processor` only.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import Any

IMAGE_POSITIONS = ("before", "after")


@dataclass(frozen=True)
class PromptConventions:
    """How a model family's checkpoints expect to be prompted (what ``"auto"`` method options resolve to).

    Attributes:
        image_position: where a single-image prompt puts the image relative to the question: ``"before"`` (the
            Qwen-VL convention, lmmiqa's default) or ``"after"`` (one-align: ``USER: <question>\\n<|image|>``).
        system_prompt: whether the family's prompts carry a system message (one-align's scorer uses none).
        pad_to_square: whether images are padded to a square before the processor (Q-Align's fixed 448² input).
        source: where these conventions come from (official code, paper), for docs and ``describe()``.
    """

    image_position: str = "before"
    system_prompt: bool = True
    pad_to_square: bool = False
    source: str = "lmmiqa default (Qwen-VL convention)"

    def __post_init__(self) -> None:
        if self.image_position not in IMAGE_POSITIONS:
            from lmmiqa.errors import ConfigError

            raise ConfigError(f"unknown image_position {self.image_position!r}; known: {', '.join(IMAGE_POSITIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_position": self.image_position,
            "system_prompt": self.system_prompt,
            "pad_to_square": self.pad_to_square,
            "source": self.source,
        }


#: the conventions of every model transformers ships (chat template, image first)
DEFAULT_CONVENTIONS = PromptConventions()


def _resolve(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class Family:
    """A natively implemented model family (see the module docstring for the contract).

    Attributes:
        model_type: the ``model_type`` of the checkpoints' ``config.json`` (e.g. ``"mplug_owl2"``).
        title: a human name (``"mPLUG-Owl2"``).
        config_class: ``"module:Class"`` of its ``PretrainedConfig`` subclass.
        model_class: ``"module:Class"`` of its model (registered for ``AutoModelForImageTextToText``).
        processor_class: ``"module:Class"`` of its processor; ``Class.from_pretrained(path, **hub_kwargs)`` loads it.
        checkpoints: published hub ids that use this family (for messages and docs).
        conventions: how its checkpoints expect prompts.
        weight_mapping: optional ``"module:function"`` returning the list of transformers weight transforms
            (``WeightRenaming``/``WeightConverter``) from the published state-dict names to the model's module names;
            registered for the model class by :meth:`register` (transformers applies it on load and reverses it on
            save, so a saved folder keeps the published names).
    """

    model_type: str
    title: str
    config_class: str
    model_class: str
    processor_class: str
    checkpoints: tuple[str, ...] = ()
    conventions: PromptConventions = field(default_factory=PromptConventions)
    weight_mapping: str | None = None

    def register(self) -> None:
        """Register the family's config and model with transformers' Auto classes (idempotent, thread-safe)."""
        with _REGISTER_LOCK:
            if self.model_type in _REGISTERED:
                return
            from lmmiqa.errors import require

            require("torch", "hf", f"the {self.title} model family")
            transformers = require("transformers", "hf", f"the {self.title} model family")
            config_cls = _resolve(self.config_class)
            model_cls = _resolve(self.model_class)
            transformers.AutoConfig.register(self.model_type, config_cls, exist_ok=True)
            transformers.AutoModelForImageTextToText.register(config_cls, model_cls, exist_ok=True)
            if self.weight_mapping:
                from transformers.conversion_mapping import register_checkpoint_conversion_mapping

                register_checkpoint_conversion_mapping(model_cls.__name__, _resolve(self.weight_mapping)(), overwrite=True)
            _REGISTERED.add(self.model_type)

    def load_processor(self, name_or_path: str, **kwargs: Any) -> Any:
        """The family's processor for a checkpoint folder or hub id (``kwargs``: hub options such as
        ``local_files_only``, ``revision``; ``trust_remote_code`` is ignored: nothing remote runs)."""
        kwargs.pop("trust_remote_code", None)
        self.register()
        return _resolve(self.processor_class).from_pretrained(name_or_path, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "family": self.title, "conventions": self.conventions.to_dict()}


_REGISTER_LOCK = threading.Lock()
_REGISTERED: set[str] = set()

__all__ = ["DEFAULT_CONVENTIONS", "IMAGE_POSITIONS", "Family", "PromptConventions"]
