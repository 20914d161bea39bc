"""Correlation metrics against scipy, with ties, constant input, NaNs and tiny n; bootstrap; orientation; bounds."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from lmmiqa.errors import ConfigError, DataError
from lmmiqa.evaluation.bounds import levels_bound, quantize_mos
from lmmiqa.evaluation.correlation import (
    bootstrap_ci,
    compute_metrics,
    fitted_plcc,
    krcc,
    orient,
    plcc,
    rmse,
    srcc,
)


@pytest.fixture()
def tied():
    rng = np.random.default_rng(3)
    y = np.round(rng.normal(3, 1, 300), 1)  # ties in MOS
    x = np.round(y + rng.normal(0, 0.7, 300))  # heavy ties in predictions (a 5-level scorer)
    return x, y


def test_match_scipy_with_ties(tied):
    x, y = tied
    assert srcc(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert krcc(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)
    assert plcc(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


@pytest.mark.parametrize("n", [3, 4])
def test_small_n_matches_scipy(n):
    x = np.array([1.0, 3.0, 2.0, 5.0])[:n]
    y = np.array([2.0, 2.5, 1.0, 4.0])[:n]
    assert srcc(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert krcc(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    assert plcc(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_than_three_pairs_give_nan(n):
    x, y = np.arange(n, dtype=float), np.arange(n, dtype=float)
    for f in (srcc, krcc, plcc):
        assert np.isnan(f(x, y))


def test_constant_predictions_give_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in (srcc, krcc, plcc):
            assert np.isnan(f(np.ones(20), np.arange(20.0)))
            assert np.isnan(f(np.arange(20.0), np.ones(20)))
        m = compute_metrics(np.ones(20), np.arange(20.0), n_boot=50)
    assert np.isnan(m.srcc) and np.isnan(m.plcc_4pl)
    assert not m.fit4.converged and "constant" in m.fit4.fallback
    assert all(np.isnan(m.ci["srcc"]))


def test_nans_are_dropped_and_counted(tied):
    x, y = tied
    x = x.copy()
    x[:7] = np.nan
    y = y.copy()
    y[10] = np.inf
    m = compute_metrics(x, y, n_boot=0)
    keep = np.isfinite(x) & np.isfinite(y)
    assert m.n == 292 and m.n_failed == 8
    assert m.srcc == pytest.approx(stats.spearmanr(x[keep], y[keep]).statistic)


def test_rmse_and_fitted_plcc():
    x = np.linspace(0, 1, 40)
    y = 1 + 4 / (1 + np.exp(-(x - 0.5) / 0.1))
    p, r, fit = fitted_plcc(x, y, "logistic4")
    assert fit.converged and p == pytest.approx(1.0, abs=1e-6) and r < 1e-4
    assert plcc(x, y) < p  # the fit linearizes a sigmoid
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3))
    with pytest.raises(ConfigError, match="logistic4, logistic5"):
        fitted_plcc(x, y, "cubic")


def test_fitted_plcc_never_flips_the_sign():
    # 4 points: the 4PL falls back to a line; the line falls, and so must the PLCC after it (was +0.9457)
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.1, 2.9, 2.2, 0.8])
    p, _, fit = fitted_plcc(x, y, "logistic4")
    assert not fit.converged and fit.kind == "linear" and fit.params[0] < 0
    assert p == pytest.approx(plcc(x, y)) and p < -0.9
    # a converged falling sigmoid: negative too, as large as the rising one's
    xs = np.linspace(0, 1, 40)
    rising = 1 + 4 / (1 + np.exp(-(xs - 0.5) / 0.1))
    up, _, _ = fitted_plcc(xs, rising, "logistic4")
    down, _, fit_down = fitted_plcc(-xs, rising, "logistic4")
    assert fit_down.converged and down == pytest.approx(-up, abs=1e-6) and up > 0.99
    p5, _, _ = fitted_plcc(-xs, rising, "logistic5")
    assert p5 < -0.99


def test_orientation_makes_agreement_positive(tied):
    x, y = tied
    # a lower-is-better tool that agrees with humans
    m = compute_metrics(-x, y, method_higher_is_better=False, n_boot=0)
    assert m.orientation.negated and m.srcc > 0.5 and "negated" in m.orientation.reason
    # a higher-is-better method on a DMOS dataset
    m = compute_metrics(x, -y, dataset_higher_is_better=False, n_boot=0)
    assert m.orientation.negated and m.srcc > 0.5
    # both lower-is-better: nothing to negate
    m = compute_metrics(-x, -y, method_higher_is_better=False, dataset_higher_is_better=False, n_boot=0)
    assert not m.orientation.negated and m.srcc > 0.5
    assert orient(True, True).to_dict() == {"negated_predictions": False, "reason": orient(True, True).reason}


def test_bootstrap_is_seeded_and_brackets_the_estimate(tied):
    x, y = tied
    a = bootstrap_ci(x, y, n_boot=300, seed=5)
    b = bootstrap_ci(x, y, n_boot=300, seed=5)
    c = bootstrap_ci(x, y, n_boot=300, seed=6)
    assert a == b and a["srcc"] != c["srcc"]
    assert a["srcc"][0] < srcc(x, y) < a["srcc"][1]
    assert a["plcc"][0] < plcc(x, y) < a["plcc"][1]
    assert a["unit"] == "image" and a["n_units"] == 300 and a["level"] == 0.95


def test_group_bootstrap_resamples_references(tied):
    x, y = tied
    groups = [f"ref{i // 10}" for i in range(len(x))]
    ci = bootstrap_ci(x, y, groups=groups, n_boot=200, seed=0)
    assert ci["unit"] == "group" and ci["n_units"] == 30
    assert ci["srcc"][0] < srcc(x, y) < ci["srcc"][1]
    few = bootstrap_ci(x[:40], y[:40], groups=groups[:40], n_boot=200)
    assert few["n_units"] == 4 and np.isnan(few["srcc"][0])  # fewer than 5 units: no interval


def test_levels_bound_formula_and_values():
    s = np.array([0.0, 0.24, 0.25, 0.5, 0.74, 1.0])
    # K=2: 2*s -> 0, .48, .5, 1, 1.48, 2 -> halves round away from zero
    np.testing.assert_array_equal(quantize_mos(s, 2), [0, 0, 1, 1, 1, 2])
    q = quantize_mos(np.linspace(1, 5, 101), 3)
    assert sorted(set(q.tolist())) == [0, 1, 2, 3]  # K + 1 values, as the paper's formula gives
    rows = levels_bound(np.random.default_rng(0).uniform(0, 100, 500), [3, 5, 9])
    assert [r["k"] for r in rows] == [3, 5, 9]
    assert rows[0]["mean"] < rows[1]["mean"] < rows[2]["mean"] < 1
    assert rows[0]["mean"] == pytest.approx((rows[0]["srcc"] + rows[0]["plcc"]) / 2)
    with pytest.raises(DataError, match="equal"):
        quantize_mos([2, 2, 2], 5)
    with pytest.raises(ConfigError):
        quantize_mos([1, 2, 3], 0)
