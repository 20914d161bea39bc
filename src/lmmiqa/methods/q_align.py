"""Q-Align-style direct scoring (Wu et al., "Q-Align: Teaching LMMs for Visual Scoring via Discrete
Text-Defined Levels", 2023) — METHODS §6.

Prompt "How would you rate the quality of this image?", answer prefix "The quality of the image is", five
words (excellent, good, fair, poor, bad) -> expectation over 5..1.

Where the image goes and whether it is padded to a square follow the loaded model's family
(:class:`lmmiqa.families.PromptConventions`) unless set: with Q-Align's own checkpoint (one-align, mPLUG-Owl2) the
question comes first and images are padded with the CLIP mean colour, exactly as its official scorer does; with the
general VLMs transformers ships, the image comes first and nothing is padded. The ``paper`` preset fixes the official
scorer's choices (and its checkpoint) whatever the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from lmmiqa.errors import ConfigError
from lmmiqa.images import pad_to_square
from lmmiqa.levels import QALIGN_SCALE, LevelScale
from lmmiqa.methods.mllm import LevelScorer, MLLMConfig
from lmmiqa.presets import Preset, PresetValue
from lmmiqa.prompts import QALIGN_ANSWER_PREFIX, QALIGN_QUESTION
from lmmiqa.types import Prompt

IMAGE_POSITIONS = ("auto", "before", "after")

#: where the official scorer's choices are written down
_SCORER = "Q-Align official scorer (Q-Future/Q-Align q_align/evaluate/scorer.py) and one-align's score()"

PAPER = Preset(
    name="paper",
    target="q-align",
    summary="Q-Align's own scorer: the one-align checkpoint, question then image, no system prompt, images padded "
    "to a square with the CLIP mean colour, 448² CLIP preprocessing, expectation over the five words",
    reference="Wu et al., Q-Align (ICML 2024); checkpoint q-future/one-align (mPLUG-Owl2, trained on KonIQ, SPAQ, "
    "KADID, AVA, LSVQ)",
    values={
        "model": PresetValue("q-future/one-align", "Q-Align model zoo: one-align, the checkpoint of the paper's numbers "
                                                   "(what pyiqa's qalign runs)"),
        "image_position": PresetValue("after", f"{_SCORER}: 'USER: How would you rate the quality of this image?\\n"
                                               "<|image|>\\nASSISTANT: The quality of the image is'"),
        "pad_to_square": PresetValue(True, f"{_SCORER}: expand2square with the CLIP mean colour before the CLIP "
                                           "image processor (448², bicubic)"),
        "readout": PresetValue("expected", f"{_SCORER}: softmax over the five words' logits at the last position, "
                                           "then the expectation (weights 1, .75, .5, .25, 0 in scorer.py: the "
                                           "same up to the linear map score_0-1 = (score_1-5 - 1) / 4)"),
    },
    notes=(
        "Scores are on lmmiqa's 1-5 scale (weights 5..1, as pyiqa's qalign); Q-Align's scorer.py reports "
        "(score - 1) / 4 on 0-1 (weights 1, .75, .5, .25, 0): the same correlations.",
        "The official scorer runs float16 on a GPU; lmmiqa's dtype 'auto' is bfloat16 on CUDA and float32 on a CPU "
        "(pass --dtype float16 for the official precision; level probabilities move by ~1e-3).",
        "There is no system prompt in Q-Align's scorer and none in q-align's prompt.",
        "448² CLIP preprocessing is one-align's own (its preprocessor_config.json, applied by its processor; no "
        "pixel budget applies to it); with another model the preset keeps that model's preprocessing.",
    ),
)


@dataclass
class QAlignConfig(MLLMConfig):
    """Q-Align options.

    Attributes:
        pad_to_square: pad images to a square with the CLIP mean colour before the processor, as Q-Align's
            preprocessing does for its fixed 448² input. None (default): as the model's family does it (on for
            Q-Align's own checkpoint, off for the general VLMs transformers ships, which take native aspect ratios).
        image_position: ``before`` (image, then the question: the general VLMs' convention), ``after`` (question,
            then the image: Q-Align's scorer) or ``auto`` (default: the model family's convention).
    """

    pad_to_square: bool | None = None
    image_position: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_position not in IMAGE_POSITIONS:
            raise ConfigError(f"unknown image_position {self.image_position!r}; known: {', '.join(IMAGE_POSITIONS)}")
        if self.pad_to_square is not None and not isinstance(self.pad_to_square, bool):
            raise ConfigError(f"pad_to_square must be true, false or unset (auto), got {self.pad_to_square!r}")


class QAlign(LevelScorer):
    """Q-Align five-level expectation (1..5) from one forward pass."""

    name = "q-align"
    config_cls = QAlignConfig
    summary = "Q-Align five-word expectation (1-5): 'The quality of the image is <excellent..bad>'"
    presets: ClassVar[dict[str, Preset]] = {"paper": PAPER}
    #: what an HTTP request may set (the prompt layout stays the server's)
    request_options: ClassVar[tuple[str, ...]] = ("readout", "pad_to_square")

    @property
    def level_scale(self) -> LevelScale:
        return QALIGN_SCALE

    def layout(self) -> tuple[str, bool]:
        """``(image_position, pad_to_square)`` in effect: the options where set, else the model family's
        conventions (:meth:`lmmiqa.backends.base.Backend.conventions`)."""
        cfg = self.config
        position, pad = cfg.image_position, cfg.pad_to_square
        if position == "auto" or pad is None:
            conv = self.backend.conventions()
            position = conv.image_position if position == "auto" else position
            pad = conv.pad_to_square if pad is None else pad
        return position, bool(pad)

    def build_prompt(self, image: Any) -> Prompt:
        position, pad = self.layout()
        if pad:
            image = pad_to_square(image)
        parts = [QALIGN_QUESTION, image] if position == "after" else [image, QALIGN_QUESTION]
        return Prompt.simple(parts, answer_prefix=QALIGN_ANSWER_PREFIX)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self._backend is not None:  # only once the model is loaded: describe() never loads it
            position, pad = self.layout()
            d["layout"] = {"image_position": position, "pad_to_square": pad}
        return d
