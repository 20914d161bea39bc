"""mPLUG-Owl2, natively (no remote code): Q-Align's one-align and Q-Scorer's base model.

The family of checkpoints whose ``config.json`` says ``model_type: mplug_owl2`` (``q-future/one-align``,
``MAGAer13/mplug-owl2-llama2-7b``, Q-Scorer's release on top of it). lmmiqa's own implementation on current
transformers: :mod:`.configuration` (the published ``config.json`` as it is), :mod:`.vision` (ViT-L/14 and the
visual abstractor), :mod:`.modeling` (the modality-adaptive LLaMA-2 decoder), :mod:`.processing` (prompt format,
tokenization with the image splice, CLIP preprocessing), :mod:`.checkpoint` (checks of a checkpoint folder's
weight files), :mod:`.tiny` (tiny checkpoints in the published layout, for tests). Q-Scorer's released adapter on
it is loaded by :mod:`lmmiqa.methods.q_scorer_release`. Proven equal to the official code on tiny random weights
(``tests/families/test_mplug_owl2_parity.py``).

This module imports no torch: :data:`FAMILY` is what :data:`lmmiqa.registry.FAMILIES` lists.
"""

from __future__ import annotations

from lmmiqa.families.base import Family, PromptConventions

MODEL_TYPE = "mplug_owl2"

#: Q-Align's scorer (``q_align/evaluate/scorer.py``) and one-align's ``score()``: the question, then the image, no
#: system prompt, images padded to a square with the CLIP mean colour before the fixed 448² CLIP preprocessing
CONVENTIONS = PromptConventions(
    image_position="after",
    system_prompt=False,
    pad_to_square=True,
    source="Q-Align official scorer (q_align/evaluate/scorer.py) and one-align score(): "
    "'USER: <question>\\n<|image|>\\nASSISTANT: <answer prefix>', expand2square with the CLIP mean",
)

FAMILY = Family(
    model_type=MODEL_TYPE,
    title="mPLUG-Owl2",
    config_class="lmmiqa.families.mplug_owl2.configuration:MPLUGOwl2Config",
    model_class="lmmiqa.families.mplug_owl2.modeling:MPLUGOwl2ForConditionalGeneration",
    processor_class="lmmiqa.families.mplug_owl2.processing:MPLUGOwl2Processor",
    checkpoints=("q-future/one-align", "MAGAer13/mplug-owl2-llama2-7b"),
    conventions=CONVENTIONS,
)

__all__ = ["CONVENTIONS", "FAMILY", "MODEL_TYPE"]
