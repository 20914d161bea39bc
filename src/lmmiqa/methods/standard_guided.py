"""Standard-guided scoring, the global part of LLM-IQA / Dog-IQA (Liu et al., "Dog-IQA: Standard-guided
Zero-shot MLLM for Mix-grained Image Quality Assessment", 2024) — METHODS §1 steps 1 and 7.

The system prompt lists a word standard per digit level (K ∈ {3, 5, 7, 9}; 7 by default); the digit is the
first token of the reply (no answer prefix). Readout: ``expected`` (default) or ``argmax`` (the paper's
one-token answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from lmmiqa.levels import LevelScale, standard_scale
from lmmiqa.methods.mllm import LevelScorer, MLLMConfig
from lmmiqa.prompts import standard_system, standard_user
from lmmiqa.types import Prompt


@dataclass
class StandardGuidedConfig(MLLMConfig):
    """Standard-guided options.

    Attributes:
        levels: number of levels K (3, 5, 7 or 9; the paper found 7 best).
    """

    levels: int = 7

    def __post_init__(self) -> None:
        super().__post_init__()
        standard_scale(self.levels)  # validates K
        self.levels = int(self.levels)


class StandardGuided(LevelScorer):
    """LLM-IQA's standard-guided digit scoring of the whole image (1..K)."""

    name = "standard-guided"
    config_cls = StandardGuidedConfig
    summary = "LLM-IQA standard-guided digit score (1-K, K in 3/5/7/9) of the whole image"

    @cached_property
    def level_scale(self) -> LevelScale:  # type: ignore[override]
        return standard_scale(self.config.levels)

    @cached_property
    def system_text(self) -> str:
        return standard_system(self.level_scale)

    @cached_property
    def user_text(self) -> str:
        return standard_user(self.level_scale)

    def build_prompt(self, image: Any) -> Prompt:
        return Prompt.simple([image, self.user_text], system=self.system_text, answer_prefix="")
