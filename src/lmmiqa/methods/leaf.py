"""LEAF: a lightweight student distilled from an MLLM quality judge (METHODS §3) — the fast scorer.

The student folder comes from ``lmmiqa distill train`` (and optionally ``lmmiqa distill calibrate``); see
:mod:`lmmiqa.distill`. No MLLM is needed at inference: one forward pass of a small network per batch, on CPU
or GPU.

``score`` is the calibrated MOS when the folder holds a calibration (``scale`` = the MOS scale, direction
that of the calibration labels; clipped to that scale, with ``details.clipped_from`` holding the map's value
when the map extrapolated past it), else the raw student output in the teacher's oriented unit (higher is better,
``scale`` None) with ``details.calibrated = false``. ``details.raw`` always holds the raw output. When the
student has a level head (teachers with level distributions) ``probabilities`` holds its distribution over the
teacher's levels.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmmiqa.distill.presets import LEAF_PAPER, STAGE_PRESETS
from lmmiqa.errors import ConfigError
from lmmiqa.images import ImageItem
from lmmiqa.methods.base import Scorer, ScorerConfig
from lmmiqa.types import ScoreResult

log = logging.getLogger(__name__)


@dataclass
class LEAFConfig(ScorerConfig):
    """LEAF scorer options.

    Attributes:
        student: the student folder (``lmmiqa distill train --out``); required.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
        calibrated: report the calibrated MOS when the folder has a calibration (false: always the raw output).
        batch_size: images per forward pass.
    """

    student: str = ""
    device: str = "auto"
    calibrated: bool = True
    batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.student or not str(self.student).strip():
            raise ConfigError(
                "the leaf method needs a student folder: option student=DIR (CLI: --student DIR), made by "
                "`lmmiqa distill train`"
            )
        self.student = str(self.student)
        if not isinstance(self.calibrated, bool):
            raise ConfigError(f"calibrated must be true or false, got {self.calibrated!r}")


class LEAF(Scorer):
    """Score images with a distilled LEAF student (calibrated MOS, or raw teacher-unit output)."""

    name = "leaf"
    config_cls = LEAFConfig
    summary = "LEAF distilled student (no MLLM at inference): --student DIR from `lmmiqa distill train`"
    presets = {"paper": LEAF_PAPER}
    stage_presets = STAGE_PRESETS

    def __init__(self, config: LEAFConfig | None = None) -> None:
        if config is None:
            raise ConfigError("the leaf method needs a student folder: LEAF(LEAFConfig(student=DIR))")
        super().__init__(config)
        from lmmiqa.distill.artifact import StudentArtifact

        self.artifact = StudentArtifact.load(config.student)
        self.calibration = self.artifact.calibration if config.calibrated else None
        self.higher_is_better = self.calibration.higher_is_better if self.calibration is not None else True  # type: ignore[misc]
        #: the preset of each step that made the student (``details.recipe``); with a preset, a step made
        #: otherwise is warned about once, here
        self.recipe = self.artifact.recipe()
        if self.preset is not None:
            other = [step for step, used in self.recipe.items() if used != self.preset]
            if other:
                log.warning(
                    "leaf --preset %s: the student %s was not made with that preset at every step (%s); its results "
                    "record the steps in details.recipe. Make it with `lmmiqa <step> --preset %s` to reproduce the "
                    "paper's recipe", self.preset, config.student,
                    ", ".join(f"{step}: {self.recipe[step] or 'lmmiqa defaults'}" for step in other), self.preset)
        self._predictor: Any = None
        self.overlap: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def predictor(self) -> Any:
        """The network on its device (built on first use)."""
        with self._lock:
            if self._predictor is None:
                self._predictor = self.artifact.predictor(self.config.device)
            return self._predictor

    @property
    def scale(self) -> tuple[float, float] | None:
        return self.calibration.scale if self.calibration is not None else None

    @property
    def model_name(self) -> str:
        return str(self.artifact.path)

    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        pred = self.predictor
        t0 = time.perf_counter()
        prep = pred.preprocess
        views = [prep.views(prep.base(it.image)) for it in items]
        t1 = time.perf_counter()
        out_views = pred.predict_views(views, chunk=max(int(self.config.batch_size), 1))
        raw, probs = out_views["raw"], out_views["probs"]
        t2 = time.perf_counter()
        scores = self.calibration.apply(raw) if self.calibration is not None else raw
        unclipped = self.calibration.map_raw(raw) if self.calibration is not None else raw
        n = max(len(items), 1)
        timings = {"preprocess": (t1 - t0) / n, "forward": (t2 - t1) / n}
        level_scale = self.artifact.level_scale
        out: list[ScoreResult] = []
        for i, it in enumerate(items):
            details: dict[str, Any] = {
                "calibrated": self.calibration is not None,
                "raw": float(raw[i]),
                "student": self.artifact.student_name,
                "recipe": dict(self.recipe),
            }
            if prep.mode == "crops":
                details["crops"] = int(out_views["n_views"][i])
                details["crop_std"] = float(out_views["crop_std"][i])
            if self.calibration is not None:
                details["calibration"] = self.calibration.kind
                if np.isfinite(unclipped[i]) and float(unclipped[i]) != float(scores[i]):  # past the scale: clipped
                    details["clipped_from"] = float(unclipped[i])
            probabilities = None
            if probs is not None and level_scale is not None:
                from lmmiqa.levels import level_details

                probabilities, lvl = level_details(probs[i], level_scale)
                lvl["level_expected"] = lvl.pop("expected")  # the head's expected level, not the score
                details.update(lvl)
            out.append(
                ScoreResult(
                    image=it.key,
                    score=float(scores[i]),
                    method=self.name,
                    higher_is_better=self.higher_is_better,
                    scale=self.scale,
                    model=self.model_name,
                    probabilities=probabilities,
                    details=details,
                    timings=dict(timings),
                )
            )
        return out

    #: the evaluation runner's hint when check_overlap finds images (instead of the bank's)
    overlap_hint = ("Evaluate on images the student was not distilled or calibrated on (another split, or "
                    "calibrate on another split)")

    def check_overlap(self, paths: list[str]) -> int:
        """How many of ``paths`` the student was distilled from (teacher-judged images) or calibrated on (the
        evaluation runner's leakage guard calls this; ``--allow-overlap`` evaluates anyway). The counts per use
        are kept in :attr:`overlap` and shown by :meth:`describe`."""
        import os

        used = self.artifact.used_images()
        canon = {os.path.realpath(p) for p in paths if isinstance(p, str)}
        counts: dict[str, Any] = {"images": len(canon)}
        hit: set[str] = set()
        for use, known in used.items():
            if known is None:
                counts[use] = None  # not recorded (older student folder)
                continue
            both = canon & known
            counts[use] = len(both)
            hit |= both
        counts["overlapping"] = len(hit)
        self.overlap = counts
        return len(hit)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if getattr(self, "overlap", None) is not None:
            d["overlap"] = self.overlap
        d["student"] = self.artifact.summary()
        return d
