"""Pure math of the LEAF teacher: reliabilities, order combination, derived pair probabilities, pair sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from lmmiqa.distill.judgments import combine_orders, derived_pair_probability, point_reliability, sample_pairs
from lmmiqa.errors import ConfigError, DataError


def test_point_reliability_entropy_hand_values():
    p = np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0, 0]])
    # 1 - H/log K: one-hot 1, uniform 0, two equal levels of four: 1 - log 2 / log 4 = 0.5
    np.testing.assert_allclose(point_reliability(p), [1.0, 0.0, 0.5], atol=1e-12)


def test_point_reliability_maxprob_and_unnormalized_rows():
    p = np.array([[2.0, 6.0], [0.1, 0.9]])
    np.testing.assert_allclose(point_reliability(p, "maxprob"), [0.75, 0.9])
    # an unnormalized row is normalized first: [0.25, 0.75] -> 1 - H/log 2
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert point_reliability(p[:1])[0] == pytest.approx(1 - h / math.log(2))


def test_point_reliability_bad_rows_and_options():
    out = point_reliability(np.array([[np.nan, 1.0], [0.0, 0.0]]))
    assert np.isnan(out).all()
    with pytest.raises(ConfigError, match="known: entropy, maxprob"):
        point_reliability(np.ones((1, 3)), "gini")
    with pytest.raises(ConfigError, match="at least 2 levels"):
        point_reliability(np.ones((2, 1)))


def test_combine_orders_mean_and_agreement():
    p, rel = combine_orders(np.array([0.8, 0.9, 0.5]), np.array([0.6, 0.1, 0.5]))
    np.testing.assert_allclose(p, [0.7, 0.5, 0.5])
    # position bias (always the first image): 0.9 then 0.1 -> agreement 0.2
    np.testing.assert_allclose(rel, [0.8, 0.2, 1.0])


def test_derived_pair_probability_thurstone_and_bradley_terry():
    sigma = 2.0
    # Thurstone case V: Φ(Δ/(√2σ)); Δ = √2σ gives Φ(1)
    p = derived_pair_probability(np.array([math.sqrt(2) * sigma, 0.0, 1.0]), np.array([0.0, 0.0, 3.0]), sigma)
    np.testing.assert_allclose(p, [norm.cdf(1.0), 0.5, norm.cdf(-2 / (math.sqrt(2) * sigma))])
    bt = derived_pair_probability(np.array([2.0]), np.array([0.0]), sigma, "bradley-terry")
    assert bt[0] == pytest.approx(1 / (1 + math.exp(-1.0)))
    with pytest.raises(DataError, match="spread"):
        derived_pair_probability(np.zeros(1), np.zeros(1), 0.0)
    with pytest.raises(ConfigError, match="thurstone, bradley-terry"):
        derived_pair_probability(np.zeros(1), np.zeros(1), 1.0, "elo")


def _keys(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in pairs.tolist()}


def test_sample_pairs_counts_uniqueness_and_determinism():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=40)
    pairs, close = sample_pairs(scores, 100, close_fraction=0.5, window=3, seed=1)
    assert pairs.shape == (100, 2) and close.shape == (100,)
    assert close.sum() == 50
    assert len(_keys(pairs)) == 100  # no duplicate unordered pair
    assert np.all(pairs[:, 0] != pairs[:, 1])
    again, again_close = sample_pairs(scores, 100, close_fraction=0.5, window=3, seed=1)
    np.testing.assert_array_equal(pairs, again)
    np.testing.assert_array_equal(close, again_close)
    other, _ = sample_pairs(scores, 100, close_fraction=0.5, window=3, seed=2)
    assert not np.array_equal(pairs, other)


def test_sample_pairs_close_pairs_are_rank_neighbours_with_different_scores():
    scores = np.array([0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 10.0, 11.0])
    pairs, close = sample_pairs(scores, 10, close_fraction=1.0, window=1, seed=0)
    rank = np.empty(len(scores), dtype=int)
    rank[np.argsort(scores, kind="stable")] = np.arange(len(scores))
    for (a, b), c in zip(pairs, close):
        if c:
            assert abs(rank[a] - rank[b]) == 1
            assert scores[a] != scores[b]  # close but not identical
    # window 1 over 8 images: 7 neighbour pairs, 2 of them ties -> 5 informative candidates, the rest random
    assert close.sum() == 5 and len(pairs) == 10


def test_sample_pairs_random_order_within_pairs():
    scores = np.arange(200, dtype=float)
    pairs, _ = sample_pairs(scores, 400, seed=0)
    a_better = np.mean(scores[pairs[:, 0]] > scores[pairs[:, 1]])
    assert 0.4 < a_better < 0.6


def test_sample_pairs_caps_and_dense_requests():
    scores = np.arange(6, dtype=float)
    pairs, _ = sample_pairs(scores, 1000, seed=0)  # capped at 6*5/2
    assert len(pairs) == 15 and len(_keys(pairs)) == 15
    pairs, _ = sample_pairs(scores, 12, close_fraction=0.0, seed=0)  # dense: enumeration branch
    assert len(_keys(pairs)) == 12
    empty, close = sample_pairs(scores, 0)
    assert empty.shape == (0, 2) and close.shape == (0,)
    assert sample_pairs([1.0], 5)[0].shape == (0, 2)


def test_sample_pairs_rejects_bad_input():
    with pytest.raises(DataError, match="finite"):
        sample_pairs([1.0, np.nan], 1)
    with pytest.raises(ConfigError, match="close_fraction"):
        sample_pairs([1.0, 2.0], 1, close_fraction=1.5)
    with pytest.raises(ConfigError, match="window"):
        sample_pairs([1.0, 2.0], 1, window=0)
    with pytest.raises(ConfigError, match="pairs"):
        sample_pairs([1.0, 2.0], -1)
