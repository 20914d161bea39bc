"""AgenticIQA fusion arithmetic (METHODS §5.4), checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmmiqa.errors import ConfigError
from lmmiqa.methods.agentic.fusion import (
    LEVELS,
    fuse,
    fuse_evidence,
    fused_weights,
    level_probs,
    mean_tool_score,
    tool_prior,
)

P = (0.1, 0.2, 0.4, 0.2, 0.1)  # p_c for c = 1..5
LOGITS = tuple(math.log(x) for x in P)


def test_level_probs_is_softmax_over_levels_only():
    assert level_probs(LOGITS) == pytest.approx(P)
    # any constant shift (the full-vocabulary normalizer) is irrelevant
    assert level_probs([x - 7.3 for x in LOGITS]) == pytest.approx(P)
    assert level_probs([0.0, -math.inf, 0.0, -math.inf, -math.inf]) == pytest.approx([0.5, 0, 0.5, 0, 0])


def test_tool_prior_hand_computed():
    # q̄ = 4, η = 1: α_c ∝ exp(-(4 - c)²) = e^-9, e^-4, e^-1, 1, e^-1
    raw = [math.exp(-9), math.exp(-4), math.exp(-1), 1.0, math.exp(-1)]
    z = sum(raw)
    assert tool_prior(4.0, 1.0) == pytest.approx([r / z for r in raw])
    assert tool_prior(4.0).sum() == pytest.approx(1.0)
    # η = 2 squares each unnormalized weight
    raw2 = [r * r for r in raw]
    assert tool_prior(4.0, 2.0) == pytest.approx([r / sum(raw2) for r in raw2])


def test_fused_score_hand_computed():
    a = [math.exp(-9), math.exp(-4), math.exp(-1), 1.0, math.exp(-1)]  # unnormalized α for q̄ = 4, η = 1
    num = a[0] * 0.1 * 1 + a[1] * 0.2 * 2 + a[2] * 0.4 * 3 + a[3] * 0.2 * 4 + a[4] * 0.1 * 5
    den = a[0] * 0.1 + a[1] * 0.2 + a[2] * 0.4 + a[3] * 0.2 + a[4] * 0.1
    expected = num / den
    assert expected == pytest.approx(3.69628, abs=1e-5)  # 1.432734... / 0.387615...
    assert fuse(LOGITS, 4.0, 1.0) == pytest.approx(expected, rel=1e-12)
    f = fuse_evidence(LOGITS, [3.5, 4.5, None], 1.0)  # q̄ = mean(3.5, 4.5) = 4; None is ignored
    assert f.q_bar == pytest.approx(4.0)
    assert f.score == pytest.approx(expected, rel=1e-12)
    assert f.p == pytest.approx(P)
    assert sum(f.weights) == pytest.approx(1.0)
    assert sum(w * c for w, c in zip(f.weights, LEVELS)) == pytest.approx(f.score)
    d = f.to_dict()
    assert list(d["p"]) == ["1", "2", "3", "4", "5"] and d["eta"] == 1.0 and d["q_bar"] == pytest.approx(4.0)


def test_no_tool_score_means_uniform_alpha():
    p = (0.1, 0.1, 0.2, 0.3, 0.3)
    logits = [math.log(x) for x in p]
    assert tool_prior(None) == pytest.approx([0.2] * 5)
    assert fuse(logits, None) == pytest.approx(0.1 * 1 + 0.1 * 2 + 0.2 * 3 + 0.3 * 4 + 0.3 * 5)  # = 3.6
    f = fuse_evidence(logits, [None, float("nan")])
    assert f.q_bar is None and f.alpha == pytest.approx([0.2] * 5) and f.score == pytest.approx(3.6)
    # η = 0 ignores the tools too
    assert fuse(logits, 1.0, eta=0.0) == pytest.approx(3.6)


def test_normalization_keeps_score_in_range():
    # without the denominator Σ α p, a sharp p far from q̄ would give ~0 (the paper's misprint)
    only_five = [-math.inf, -math.inf, -math.inf, -math.inf, 0.0]
    assert fuse(only_five, 1.0, eta=1.0) == pytest.approx(5.0)
    assert fuse(only_five, 1.0, eta=1000.0) == pytest.approx(5.0)  # log domain: no 0/0 underflow
    rng = np.random.default_rng(0)
    for _ in range(200):
        logits = rng.normal(0, 5, 5)
        q_bar = float(rng.uniform(1, 5))
        eta = float(rng.choice([0.0, 0.5, 1.0, 10.0, 200.0]))
        q = fuse(logits, q_bar, eta)
        assert 1.0 <= q <= 5.0
        w = fused_weights(logits, q_bar, eta)
        assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)


def test_prior_pulls_toward_tool_mean():
    flat = [0.0] * 5
    assert fuse(flat, 1.0) < fuse(flat, 3.0) < fuse(flat, 5.0)
    assert fuse(flat, 3.0) == pytest.approx(3.0)


def test_mean_tool_score():
    assert mean_tool_score([1.0, 2.0, None, float("inf"), 3.0]) == pytest.approx(2.0)
    assert mean_tool_score([]) is None


def test_invalid_inputs():
    with pytest.raises(ValueError, match="no finite"):
        level_probs([-math.inf] * 5)
    with pytest.raises(ValueError):
        level_probs([0.0, float("nan"), 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="expected 5"):
        fuse([0.0] * 4, 3.0)
    with pytest.raises(ConfigError, match="eta"):
        fuse(LOGITS, 3.0, eta=-1.0)
    with pytest.raises(ValueError, match="q_bar"):
        fuse(LOGITS, float("nan"))
