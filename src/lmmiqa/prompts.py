"""Prompts as named data (frozen by golden-file tests in ``tests/golden/``).

Sources: Q-Align (Wu et al. 2023) §6 of METHODS.md; LLM-IQA / Dog-IQA (Liu et al. 2024) standard-guided prompt,
METHODS §1. A change of wording here is a deliberate, reviewed diff: the golden test fails until updated.
"""

from __future__ import annotations

from lmmiqa.levels import LevelScale

QALIGN_QUESTION = "How would you rate the quality of this image?"
QALIGN_ANSWER_PREFIX = "The quality of the image is"

STANDARD_SYSTEM_TEMPLATE = (
    "You are a helpful assistant to evaluate image quality. You will be given standards for each quality level. "
    "The quality standard is listed as follows: {standards}. "
    "The higher the image quality is, the higher the score should be."
)
STANDARD_USER_TEMPLATE = "Please evaluate the quality of the image and score in [{levels}]."


def standard_system(scale: LevelScale) -> str:
    """System text listing ``K: word`` from the highest level down, as in the LLM-IQA paper."""
    pairs = [f"{tok}: {word}" for tok, word in zip(scale.tokens, scale.words)]
    return STANDARD_SYSTEM_TEMPLATE.format(standards=", ".join(reversed(pairs)))


def standard_user(scale: LevelScale) -> str:
    """User question listing the allowed digits in ascending order."""
    return STANDARD_USER_TEMPLATE.format(levels=", ".join(scale.tokens))
