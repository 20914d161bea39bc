"""Q-Align-style direct scoring (Wu et al., "Q-Align: Teaching LMMs for Visual Scoring via Discrete
Text-Defined Levels", 2023) — METHODS §6.

Prompt "How would you rate the quality of this image?", answer prefix "The quality of the image is", five
words (excellent, good, fair, poor, bad) -> expectation over 5..1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmmiqa.images import pad_to_square
from lmmiqa.levels import QALIGN_SCALE, LevelScale
from lmmiqa.methods.mllm import LevelScorer, MLLMConfig
from lmmiqa.prompts import QALIGN_ANSWER_PREFIX, QALIGN_QUESTION
from lmmiqa.types import Prompt


@dataclass
class QAlignConfig(MLLMConfig):
    """Q-Align options.

    Attributes:
        pad_to_square: pad images to a square with the CLIP mean colour before the processor, as Q-Align's
            preprocessing does for its fixed 448² input (off by default: current VLMs take native aspect ratios).
    """

    pad_to_square: bool = False


class QAlign(LevelScorer):
    """Q-Align five-level expectation (1..5) from one forward pass."""

    name = "q-align"
    config_cls = QAlignConfig
    summary = "Q-Align five-word expectation (1-5): 'The quality of the image is <excellent..bad>'"

    @property
    def level_scale(self) -> LevelScale:
        return QALIGN_SCALE

    def build_prompt(self, image: Any) -> Prompt:
        if self.config.pad_to_square:
            image = pad_to_square(image)
        return Prompt.simple([image, QALIGN_QUESTION], answer_prefix=QALIGN_ANSWER_PREFIX)
