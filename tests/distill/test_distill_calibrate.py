"""LEAF calibration: the three monotone maps, direction handling, subset draw, held-out report."""

from __future__ import annotations

import numpy as np
import pytest

from lmmiqa.distill.calibrate import (
    CalibrateConfig,
    Calibration,
    calibrate_raw,
    choose_subset,
    fit_calibration,
)
from lmmiqa.errors import ConfigError, DataError
from lmmiqa.evaluation.logistic import logistic4


def test_logistic_recovers_a_logistic_relation():
    x = np.linspace(-3, 3, 40)
    y = logistic4(x, 5.0, 1.0, 0.5, 0.8)
    cal = fit_calibration(x, y, "logistic", scale=(1.0, 5.0))
    assert cal.kind == "logistic" and cal.params["converged"] is True and cal.params["kind"] == "logistic4"
    np.testing.assert_allclose(cal.apply(x), y, atol=1e-4)
    assert cal.scale == (1.0, 5.0) and cal.higher_is_better


def test_logistic_falls_back_to_a_line_with_too_few_labels_and_says_so():
    cal = fit_calibration([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], "logistic")
    assert cal.params["converged"] is False and "too few points" in cal.params["fallback"]
    np.testing.assert_allclose(cal.map_raw([3.0]), [4.0])  # the line extrapolates...
    np.testing.assert_allclose(cal.apply([3.0, 1.5, -9.0]), [3.0, 2.5, 1.0])  # ...the score stays on its scale
    assert cal.scale == (1.0, 3.0)  # the label range when no scale is given


def test_calibrated_scores_never_leave_the_stated_scale():
    # a line through 4 labels: a student output past the calibration data would give 5.16 "on [1, 5]"
    cal = fit_calibration([0.0, 1.0, 2.0, 3.0], [1.5, 2.5, 3.5, 4.5], "linear", scale=(1.0, 5.0))
    assert cal.map_raw([3.66])[0] == pytest.approx(5.16)
    out = cal.apply([3.66, -2.0, np.nan, 1.0])
    assert out[0] == 5.0 and out[1] == 1.0 and np.isnan(out[2]) and out[3] == pytest.approx(2.5)


def test_a_near_step_logistic_is_refitted_smooth():
    from lmmiqa.distill.calibrate import MIN_LOGISTIC_SCALE

    x = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0])
    y = np.array([1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0])  # least squares alone would give a step
    cal = fit_calibration(x, y, "logistic")
    assert cal.params["optimizer"] == "trf-min-scale" and "near-step" in cal.params["note"]
    assert cal.params["params"][3] >= MIN_LOGISTIC_SCALE * np.std(x) * (1 - 1e-9)
    grid = cal.apply(np.linspace(3, 10, 8))
    assert np.all(np.diff(grid) > 0) and len(np.unique(np.round(grid, 3))) == 8  # smooth, not two values
    back = Calibration.from_dict(cal.to_dict())
    np.testing.assert_allclose(back.apply(x), cal.apply(x))


def test_isotonic_is_monotone_and_clips_outside_the_fitted_range():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 50)
    y = 3 * x + rng.normal(0, 0.2, 50)
    cal = fit_calibration(x, y, "isotonic")
    grid = np.linspace(-1, 2, 200)
    out = cal.apply(grid)
    assert np.all(np.diff(out) >= -1e-12)
    assert out[0] == pytest.approx(cal.params["y"][0]) and out[-1] == pytest.approx(cal.params["y"][-1])
    from sklearn.isotonic import IsotonicRegression

    ref = IsotonicRegression(out_of_bounds="clip").fit(x, y)
    np.testing.assert_allclose(cal.apply(x), ref.predict(x), atol=1e-12)


def test_linear_map_hand_values_and_nan_passthrough():
    cal = fit_calibration([0.0, 1.0, 2.0], [1.0, 3.0, 5.0], "linear")
    assert cal.params == {"a": pytest.approx(2.0), "b": pytest.approx(1.0)}
    out = cal.apply([0.5, np.nan])
    assert out[0] == pytest.approx(2.0) and np.isnan(out[1])


@pytest.mark.parametrize("kind", ["logistic", "isotonic", "linear"])
def test_a_student_that_runs_against_the_labels_is_refused(kind):
    x = np.arange(10.0)
    with pytest.raises(DataError, match="runs against the labels"):
        fit_calibration(x, -x, kind)


def test_lower_is_better_labels_fit_from_the_negated_output():
    raw = np.arange(10.0)  # higher = better for the student
    dmos = 1.0 - raw / 10  # lower = better
    cal = fit_calibration(raw, dmos, "linear", higher_is_better=False)
    assert cal.input_sign == -1.0 and cal.higher_is_better is False
    np.testing.assert_allclose(cal.apply(raw), dmos, atol=1e-12)


def test_round_trip_through_a_dict():
    x = np.linspace(0, 1, 30)
    for kind in ("logistic", "isotonic", "linear"):
        cal = fit_calibration(x, 2 * x + 1 + 0.01 * np.sin(20 * x), kind, scale=(0.0, 5.0))
        back = Calibration.from_dict(cal.to_dict())
        np.testing.assert_allclose(back.apply(x), cal.apply(x))
        assert back.scale == (0.0, 5.0)


def test_fit_needs_two_pairs_and_a_known_kind():
    with pytest.raises(DataError, match="at least 2"):
        fit_calibration([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ConfigError, match="logistic, isotonic, linear"):
        fit_calibration([1.0, 2.0], [1.0, 2.0], "spline")
    with pytest.raises(DataError, match="same output"):
        fit_calibration([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], "linear")


def test_choose_subset_counts_and_determinism():
    a = choose_subset(100, fraction=0.1, seed=0)
    assert len(a) == 10 and len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, choose_subset(100, fraction=0.1, seed=0))
    assert not np.array_equal(a, choose_subset(100, fraction=0.1, seed=1))
    assert len(choose_subset(100, count=37, seed=0)) == 37
    assert len(choose_subset(10, fraction=0.01)) == 2  # at least 2
    with pytest.raises(ConfigError, match="exactly one"):
        choose_subset(10)
    with pytest.raises(DataError, match="only 10"):
        choose_subset(10, count=11)
    with pytest.raises(ConfigError, match="fraction"):
        choose_subset(10, fraction=0.0)


def test_calibrate_raw_reports_on_the_held_out_remainder():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=60)
    mos = 3 + raw + rng.normal(0, 0.1, 60)
    raw[5] = np.nan  # a failed image is left out of both parts
    cal, info = calibrate_raw(raw, mos, CalibrateConfig(kind="linear", n=20, seed=4))
    assert cal.kind == "linear"
    assert info["n_calibration"] == 20 and info["n_heldout"] == 39
    assert 5 not in info["indices"].tolist()
    assert info["heldout"]["n"] == 39 and info["heldout"]["srcc"] > 0.95 and info["heldout"]["plcc"] > 0.95
    assert info["calibration_fit"]["rmse"] < 0.2


def test_calibrate_config_validation():
    assert CalibrateConfig().fraction == 0.1
    with pytest.raises(ConfigError, match="either fraction or n"):
        CalibrateConfig(fraction=0.2, n=10)
    with pytest.raises(ConfigError, match="n must be"):
        CalibrateConfig(n=1)
    with pytest.raises(ConfigError, match="logistic, isotonic, linear"):
        CalibrateConfig(kind="quantile")
