"""Logistic maps and fits: sanity values, numerical stability, recovery, scale invariance, fallbacks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lmmiqa.evaluation import logistic as lg
from lmmiqa.evaluation.logistic import fit_logistic4, fit_logistic5, logistic4, logistic5


def test_logistic5_matches_methods_sanity_values():
    # METHODS.md §5.3: Q-Align raw 1..5 -> 1.35, 2.10, 2.89, 3.72, 4.57 with the paper's betas, standard form
    out = logistic5(np.arange(1, 6), 28.8204, 0.1469, 6.1941, -0.1906, 6.7863)
    np.testing.assert_allclose(out, [1.35, 2.10, 2.89, 3.72, 4.57], atol=0.006)


def test_logistic_functions_are_stable_at_extremes():
    x = np.array([-1e308, -1e6, 0.0, 1e6, 1e308])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y4 = logistic4(x, 5.0, 1.0, 0.0, 1e-3)
        y5 = logistic5(x, 2.0, 50.0, 0.0, 0.0, 3.0)
    np.testing.assert_allclose(y4, [1, 1, 3, 5, 5])
    np.testing.assert_allclose(y5, [2, 2, 3, 4, 4])
    # b4 = 0 is a step, b4 < 0 uses |b4|
    np.testing.assert_allclose(logistic4([-1.0, 1.0], 5, 1, 0, 0), [1, 5])
    np.testing.assert_allclose(logistic4([0.3], 5, 1, 0, -2), logistic4([0.3], 5, 1, 0, 2))


def test_fit_logistic4_recovers_parameters():
    x = np.linspace(-3, 7, 60)
    y = logistic4(x, 4.5, 1.2, 2.0, 0.8)
    fit = fit_logistic4(x, y)
    assert fit.converged and fit.fallback is None and fit.kind == "logistic4"
    np.testing.assert_allclose(fit.params, [4.5, 1.2, 2.0, 0.8], rtol=1e-4, atol=1e-4)
    assert fit.sse < 1e-8 and fit.n == 60


def test_fit_logistic5_recovers_curve():
    x = np.linspace(0, 10, 80)
    y = logistic5(x, 3.0, 1.5, 5.0, 0.05, 2.5)
    fit = fit_logistic5(x, y)
    assert fit.converged and fit.kind == "logistic5"
    np.testing.assert_allclose(fit.predict(x), y, atol=1e-5)


def test_fits_are_invariant_to_prediction_units():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = 3 + np.tanh(x) + rng.normal(0, 0.1, 200)
    for fitter in (fit_logistic4, fit_logistic5):
        a, b = fitter(x, y), fitter(x * 1000.0 + 5e4, y)
        assert a.converged and b.converged
        np.testing.assert_allclose(a.predict(x), b.predict(x * 1000.0 + 5e4), atol=1e-4)


def test_decreasing_relation_is_fitted():
    x = np.linspace(0, 1, 50)
    y = 5 - 4 * x**2
    for fitter in (fit_logistic4, fit_logistic5):
        fit = fitter(x, y)
        assert fit.converged
        assert np.corrcoef(fit.predict(x), y)[0, 1] > 0.99


@pytest.mark.parametrize("fitter,need", [(fit_logistic4, 5), (fit_logistic5, 6)])
def test_too_few_points_fall_back_to_a_line(fitter, need):
    x = np.arange(need - 1, dtype=float)
    y = 2 * x + 1
    fit = fitter(x, y)
    assert not fit.converged
    assert "too few points" in fit.fallback and f"< {need}" in fit.fallback
    np.testing.assert_allclose(fit.predict(x), y, atol=1e-9)


def test_fit5_fallback_parameters_plug_into_logistic5():
    fit = fit_logistic5([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert fit.kind == "logistic5" and fit.params[0] == 0.0
    np.testing.assert_allclose(logistic5(np.array([1.0, 2.0, 3.0]), *fit.params), [2, 4, 6], atol=1e-9)


def test_constant_predictions_fall_back_to_the_mean():
    f4 = fit_logistic4(np.ones(10), np.arange(10.0))
    f5 = fit_logistic5(np.ones(10), np.arange(10.0))
    for f in (f4, f5):
        assert not f.converged and "constant" in f.fallback
        np.testing.assert_allclose(f.predict(np.ones(3)), 4.5)


def test_nans_are_dropped_before_fitting():
    x = np.linspace(0, 1, 30)
    y = logistic4(x, 5, 1, 0.5, 0.1)
    x[[3, 7]] = np.nan
    y[10] = np.inf
    fit = fit_logistic4(x, y)
    assert fit.converged and fit.n == 27


def test_optimizer_failure_is_reported_not_hidden(monkeypatch):
    monkeypatch.setattr(lg, "MAXFEV", 2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = np.tanh(x) + rng.normal(0, 0.3, 50)
    fit = fit_logistic4(x, y)
    assert not fit.converged and fit.kind == "linear"
    assert fit.fallback.startswith("least-squares line (optimizer")
    d = fit.to_dict()
    assert d["requested"] == "logistic4" and d["converged"] is False


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="same length"):
        fit_logistic4([1, 2, 3], [1, 2])
