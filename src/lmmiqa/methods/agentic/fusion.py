"""AgenticIQA score fusion (METHODS §5.4) as pure functions.

The summarizer answers one of the letters A–E (Excellent … Bad = 5 … 1). Its level logits give
``p_c`` (softmax over the five letters only). The tools give a prior around their mean normalized score ``q̄``:

    α_c = exp(−η (q̄ − c)²) / Σ_j exp(−η (q̄ − j)²),   c = 1..5

and the fused score is the normalized product

    q = Σ_c α_c p_c c / Σ_c α_c p_c.

The AgenticIQA paper omits the denominator; without it the score leaves [1, 5] (METHODS §5.4 records the
correction). With no tool score, α is uniform and ``q = Σ_c p_c c``. Everything here is computed in the log
domain (``log w_c = log p_c − η (q̄ − c)²``, normalized with log-sum-exp), so a sharp ``p`` far from ``q̄`` or a
large ``η`` never underflows to 0/0.

All arrays are in level order ``c = 1..5`` (lowest first), as :data:`lmmiqa.levels.LETTER_SCALE`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError

#: the level values c of the AgenticIQA letters, lowest first (E=1 … A=5)
LEVELS: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)


def _levels(levels: Sequence[float] | None) -> np.ndarray:
    v = np.asarray(LEVELS if levels is None else levels, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ConfigError("levels must be a 1-D sequence of at least two values")
    return v


def _check_eta(eta: float) -> float:
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ConfigError(f"eta must be a finite number >= 0, got {eta!r}")
    return eta


def nearest_level(score: float, levels: Sequence[float] | None = None) -> int:
    """Index of the level nearest to ``score`` (level order); exactly half-way goes to the higher level
    (rounding half up: 2.5 → 3, 2.4 → 2). The one rule that names a score's level everywhere (the summarizer's
    templated explanation, ``details.level_name``, ``lmmiqa assess``).

    Raises:
        ValueError: ``score`` is not finite.
    """
    v = _levels(levels)
    x = float(score)
    if not math.isfinite(x):
        raise ValueError(f"score must be finite, got {score!r}")
    d = np.abs(v - x)
    best = float(d.min())
    ties = np.flatnonzero(d <= best + 1e-9)
    return int(ties[np.argmax(v[ties])])


def level_name(score: float, levels: Sequence[float], words: Sequence[str]) -> str:
    """The word of the level nearest to ``score`` (:func:`nearest_level`)."""
    if len(words) != len(levels):
        raise ValueError(f"{len(words)} words for {len(levels)} levels")
    return str(words[nearest_level(score, levels)])


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-softmax of one row; ``-inf`` entries stay ``-inf``; a row of all ``-inf`` raises."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        raise ValueError("no finite level logit: the level probabilities are undefined")
    if np.any(np.isnan(x)) or np.any(x[~finite] > 0):
        raise ValueError(f"level logits must be finite or -inf, got {x.tolist()}")
    m = float(np.max(x[finite]))
    shifted = np.where(finite, x - m, -np.inf)
    return shifted - math.log(float(np.exp(shifted[finite]).sum()))


def level_probs(level_logits: Sequence[float]) -> np.ndarray:
    """``p_c``: softmax over the level logits (or log-probabilities) only, in level order.

    Args:
        level_logits: one logit per level, lowest level first; ``-inf`` means "never".

    Raises:
        ValueError: when no entry is finite (no level is possible) or an entry is NaN/+inf.
    """
    return np.exp(_log_softmax(np.asarray(level_logits, dtype=np.float64)))


def mean_tool_score(normalized: Iterable[float | None]) -> float | None:
    """``q̄``: the mean of the normalized (1–5) tool scores, ignoring missing/non-finite ones; ``None`` if none."""
    vals = [float(v) for v in normalized if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def _log_prior(q_bar: float | None, eta: float, v: np.ndarray) -> np.ndarray:
    if q_bar is None:
        return np.full(v.shape, -math.log(v.size))
    q_bar = float(q_bar)
    if not math.isfinite(q_bar):
        raise ValueError(f"q_bar must be finite or None, got {q_bar!r}")
    return _log_softmax(-eta * (q_bar - v) ** 2)


def tool_prior(q_bar: float | None, eta: float = 1.0, levels: Sequence[float] | None = None) -> np.ndarray:
    """``α_c = exp(−η(q̄ − c)²) / Σ_j exp(−η(q̄ − j)²)``; uniform when ``q_bar`` is ``None`` (no tool score).

    ``η = 0`` also gives the uniform prior (the tools are ignored).
    """
    return np.exp(_log_prior(q_bar, _check_eta(eta), _levels(levels)))


def fused_weights(
    level_logits: Sequence[float], q_bar: float | None, eta: float = 1.0, levels: Sequence[float] | None = None
) -> np.ndarray:
    """The normalized product ``w_c = α_c p_c / Σ_j α_j p_j`` (the distribution whose mean is the fused score)."""
    v = _levels(levels)
    logits = np.asarray(level_logits, dtype=np.float64)
    if logits.shape != v.shape:
        raise ValueError(f"expected {v.size} level logits, got shape {logits.shape}")
    return np.exp(_log_softmax(_log_softmax(logits) + _log_prior(q_bar, _check_eta(eta), v)))


def fuse(
    level_logits: Sequence[float], q_bar: float | None, eta: float = 1.0, levels: Sequence[float] | None = None
) -> float:
    """The fused AgenticIQA score ``q = Σ α_c p_c c / Σ α_c p_c`` (in ``[min(levels), max(levels)]``)."""
    v = _levels(levels)
    w = fused_weights(level_logits, q_bar, eta, v)
    return float(np.clip(w @ v, v.min(), v.max()))


@dataclass(frozen=True)
class Fusion:
    """Everything one fusion computed (reported as ``details.fusion``).

    Attributes:
        score: the fused score q.
        p: the summarizer's level probabilities p_c (level order).
        alpha: the tool prior α_c (level order; uniform when ``q_bar`` is None).
        weights: α_c p_c / Σ α p (level order; ``score = Σ weights·c``).
        q_bar: mean normalized tool score, or None.
        eta: the prior's sharpness η.
        levels: the level values c.
    """

    score: float
    p: tuple[float, ...]
    alpha: tuple[float, ...]
    weights: tuple[float, ...]
    q_bar: float | None
    eta: float
    levels: tuple[float, ...] = field(default=LEVELS)

    def to_dict(self) -> dict[str, Any]:
        keys = [str(int(c)) if float(c).is_integer() else repr(float(c)) for c in self.levels]
        return {
            "score": self.score,
            "p": dict(zip(keys, self.p)),
            "alpha": dict(zip(keys, self.alpha)),
            "weights": dict(zip(keys, self.weights)),
            "q_bar": self.q_bar,
            "eta": self.eta,
        }


def fuse_evidence(
    level_logits: Sequence[float],
    tool_scores: Iterable[float | None],
    eta: float = 1.0,
    levels: Sequence[float] | None = None,
) -> Fusion:
    """Fuse the summarizer's level logits with the normalized tool scores (METHODS §5.4); all parts returned."""
    v = _levels(levels)
    eta = _check_eta(eta)
    q_bar = mean_tool_score(tool_scores)
    p = level_probs(level_logits)
    alpha = tool_prior(q_bar, eta, v)
    w = fused_weights(level_logits, q_bar, eta, v)
    return Fusion(
        score=float(np.clip(w @ v, v.min(), v.max())),
        p=tuple(float(x) for x in p),
        alpha=tuple(float(x) for x in alpha),
        weights=tuple(float(x) for x in w),
        q_bar=q_bar,
        eta=eta,
        levels=tuple(float(x) for x in v),
    )
