"""A model-free scorer for tests: a real image statistic (sharpness: mean absolute Laplacian x contrast).

Importable as ``stat_scorer:SharpnessScorer`` when ``tests/evaluation`` is on ``sys.path`` (the kill-and-resume
test runs ``python -m lmmiqa.cli eval --method stat_scorer:SharpnessScorer`` in a subprocess).
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass

import numpy as np

from lmmiqa.methods.base import Scorer, ScorerConfig
from lmmiqa.types import ScoreResult


@dataclass
class SharpnessConfig(ScorerConfig):
    """Options: ``delay`` seconds of sleep per batch (to make runs slow enough to interrupt);
    ``fail_every`` makes every n-th image (by sorted name) fail, to test failure accounting."""

    delay: float = 0.0
    fail_every: int = 0
    lower_is_better: bool = False


class SharpnessScorer(Scorer):
    """Gradient energy of the grey image scaled by its standard deviation (blur, low contrast -> low)."""

    name = "test-sharpness"
    config_cls = SharpnessConfig

    def score_items(self, items):
        cfg = self.config
        if cfg.delay:
            time.sleep(cfg.delay)
        out = []
        for it in items:
            if cfg.fail_every and zlib.crc32(os.path.basename(it.key).encode()) % cfg.fail_every == 0:
                out.append(self.failure(it.key, "synthetic failure"))
                continue
            g = np.asarray(it.image.convert("L"), dtype=np.float64) / 255.0
            lap = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean()
            s = float(lap * g.std() * 100.0)
            out.append(
                ScoreResult(
                    image=it.key,
                    score=-s if cfg.lower_is_better else s,
                    method=self.name,
                    higher_is_better=not cfg.lower_is_better,
                    timings={"total": 0.001},
                )
            )
        return out
