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


# IQARAG (METHODS §2.4): "Give you P images." (P = number of reference images), then per reference the image and
# "This image's quality is <level>." (the Q-Align word of its MOS bin), then the query image and the question;
# the answer continues "The quality of this image is" ("this", as in the IQARAG paper).
IQARAG_INTRO_TEMPLATE = "Give you {n} images."
IQARAG_REFERENCE_TEMPLATE = "This image's quality is {level}."
IQARAG_QUESTION = "How would you rate the quality of this image?"
IQARAG_ANSWER_PREFIX = "The quality of this image is"
