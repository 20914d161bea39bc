"""mPLUG-Owl3 (mPLUG/mPLUG-Owl3-7B-240728, the checkpoint LLM-IQA's published numbers come from), run natively.

Loading a checkpoint folder whose ``config.json`` names ``model_type: "mplugowl3"`` through the transformers backend
builds lmmiqa's classes (:mod:`.modeling`, :mod:`.processing`), never the hub's remote code. The published weight
names are the module names, so the published files load as they are (``vision_model.head.*``, SigLIP's unused
pooling head, may be present or not). What is inferred about the tokenizer is in :mod:`.tokenizer`.

Importing this package loads no torch: :data:`FAMILY` names its classes as ``"module:Class"`` strings.
"""

from __future__ import annotations

from lmmiqa.families.base import Family, PromptConventions

FAMILY = Family(
    model_type="mplugowl3",
    title="mPLUG-Owl3",
    config_class="lmmiqa.families.mplug_owl3.configuration:MplugOwl3Config",
    model_class="lmmiqa.families.mplug_owl3.modeling:MplugOwl3ForConditionalGeneration",
    processor_class="lmmiqa.families.mplug_owl3.processing:MplugOwl3Processor",
    checkpoints=("mPLUG/mPLUG-Owl3-7B-240728",),
    conventions=PromptConventions(
        image_position="before",
        system_prompt=True,
        pad_to_square=False,
        source="mPLUG-Owl3 model card ('<|image|>\\nDescribe this image.') and its processor (system turn supported)",
    ),
)

__all__ = ["FAMILY"]
