"""A test-only model family for the families seam: Qwen2.5-VL's classes under a model_type of their own.

It stands in for a natively implemented family (mPLUG-Owl2, ...) so that the seam is tested end to end without one:
a checkpoint folder whose config.json names ``lmmiqa_seam_test`` (and an ``auto_map`` to code that does not exist)
must load through the transformers backend's ordinary path, with this family's classes and conventions.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from lmmiqa.families.base import Family, PromptConventions

MODEL_TYPE = "lmmiqa_seam_test"


class SeamConfig(Qwen2_5_VLConfig):
    model_type = MODEL_TYPE


class SeamModel(Qwen2_5_VLForConditionalGeneration):
    config_class = SeamConfig


def weight_mapping() -> list[Any]:
    """Qwen2.5-VL's own renames (transformers keys them by class name, and this class has another name)."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    return get_checkpoint_conversion_mapping("Qwen2_5_VLForConditionalGeneration")


class SeamProcessor:
    """Loads the folder's Qwen2.5-VL processor (the family's own processor in a real family)."""

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> Any:
        from lmmiqa.backends.hf_processor import load_processor

        return load_processor(name_or_path, **kwargs)


FAMILY = Family(
    model_type=MODEL_TYPE,
    title="seam test family",
    config_class="seam_family:SeamConfig",
    model_class="seam_family:SeamModel",
    processor_class="seam_family:SeamProcessor",
    checkpoints=("example/seam-test",),
    conventions=PromptConventions(image_position="after", system_prompt=False, pad_to_square=True, source="test"),
    weight_mapping="seam_family:weight_mapping",
)
