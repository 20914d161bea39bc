"""The 5-parameter maps: paper β, clipping, limits, shipped synthetic maps, fitting and the refitted-map cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmmiqa import registry
from lmmiqa.errors import ConfigError, DataError
from lmmiqa.evaluation.logistic import logistic5
from lmmiqa.tools import get_tool
from lmmiqa.tools import maps as M


def test_q_align_paper_map_sanity_values():
    """METHODS.md §5.3: with the standard form, Q-Align raw 1..5 -> 1.35, 2.10, 2.89, 3.72, 4.57."""
    m = M.paper_map("q-align")
    got = [round(m.apply(q), 2) for q in (1, 2, 3, 4, 5)]
    assert got == [1.35, 2.10, 2.89, 3.72, 4.57]


def test_paper_betas_as_printed():
    assert M.PAPER_BETAS["niqe"] == (-1.4174, 0.8785, 6.9416, -0.0059, 2.7374)
    assert M.PAPER_BETAS["brisque"] == (-2.2106, 0.0684, 54.3418, 0.0050, 2.2728)
    assert M.PAPER_BETAS["ssim"] == (94.4202, 64.9155, 1.0664, 2.8744, 47.6819)
    assert M.PAPER_BETAS["gmsd"] == (-5.9925, -23.3876, -59.6895, -13.8274, 1.0789)


def test_apply_map_is_the_clipped_standard_logistic():
    params = M.PAPER_BETAS["ssim"]
    x = np.array([0.2, 0.5, 0.8, 0.95, 1.0])
    expected = np.clip(
        params[0] * (0.5 - 1.0 / (1.0 + np.exp(params[1] * (x - params[2])))) + params[3] * x + params[4], 1, 5
    )
    np.testing.assert_allclose(M.apply_map(params, x), expected, rtol=1e-12)
    assert M.apply_map(params, 0.0) == 1.0  # clipped from below
    assert float(M.apply_map((0, 0, 0, 1, 0), 99.0)) == 5.0  # and from above


def test_apply_map_limits_and_nan():
    assert np.isnan(M.apply_map(M.PAPER_BETAS["niqe"], np.nan))
    # β4 != 0: the line term decides the limit
    assert float(M.apply_map((0, 1, 0, 1, 0), np.inf)) == 5.0
    assert float(M.apply_map((0, 1, 0, -1, 0), np.inf)) == 1.0
    # β4 == 0: the logistic's own limit, no nan from 0·inf
    assert float(M.apply_map((2.0, 1.0, 0.0, 0.0, 3.0), np.inf)) == pytest.approx(4.0)
    assert float(M.apply_map((2.0, 1.0, 0.0, 0.0, 3.0), -np.inf)) == pytest.approx(2.0)


def test_every_builtin_tool_has_a_default_map_with_the_right_source():
    paper = {"niqe", "brisque", "ssim", "gmsd"}
    for name in registry.names("tool"):
        m = get_tool(name).default_map
        assert m is not None, name
        assert m.source == ("paper" if name in paper else "synthetic"), name


@pytest.mark.parametrize("name", sorted(M.SYNTHETIC_MAPS))
def test_synthetic_maps_are_monotone_in_the_tool_direction(name):
    m = M.synthetic_map(name)
    tool = get_tool(name)
    assert m.domain is not None and m.fit["converged"]
    lo, hi = m.domain
    values = m.apply_many(np.linspace(lo - (hi - lo), hi + (hi - lo), 500))
    d = np.diff(values)
    assert np.all(d >= -1e-9) if tool.higher_is_better else np.all(d <= 1e-9)
    assert values.max() - values.min() > 1.0  # it actually spans the scale
    assert "not human opinion" in m.note


def test_domain_clamps_raw_values():
    m = M.ToolMap((0.0, 0.0, 0.0, 1.0, 0.0), "fitted", domain=(2.0, 4.0))
    assert m.apply(0.0) == 2.0 and m.apply(10.0) == 4.0 and m.apply(np.inf) == 4.0 and m.apply(3.0) == 3.0


def test_psnr_of_identical_images_normalizes_to_the_top_of_its_map():
    tool = get_tool("psnr")
    img = np.full((32, 32, 3), 100, dtype=np.uint8)
    r = tool.run(img, ref=img)
    assert r.raw == np.inf and r.details["raw_text"] == "inf"
    assert r.normalized == pytest.approx(tool.map.apply(tool.map.domain[1]))
    assert r.to_dict()["raw"] is None  # JSON has no inf


def test_toolmap_validation():
    with pytest.raises(ConfigError):
        M.ToolMap((1.0, 2.0, 3.0), "paper")
    with pytest.raises(ConfigError):
        M.ToolMap((1.0, 2.0, 3.0, 4.0, np.nan), "paper")
    with pytest.raises(ConfigError):
        M.ToolMap((1.0, 2.0, 3.0, 4.0, 5.0), "guessed")
    with pytest.raises(ConfigError):
        M.ToolMap((1.0, 2.0, 3.0, 4.0, 5.0), "fitted", domain=(3.0, 1.0))


def test_rescale_mos():
    np.testing.assert_allclose(M.rescale_mos([0, 50, 100], (0, 100), True), [1, 3, 5])
    np.testing.assert_allclose(M.rescale_mos([0, 50, 100], (0, 100), False), [5, 3, 1])  # DMOS flipped
    np.testing.assert_allclose(M.rescale_mos([2, 3, 4], None, True), [1, 3, 5])  # observed range
    with pytest.raises(DataError):
        M.rescale_mos([1, 1], None, True)
    with pytest.raises(DataError):
        M.rescale_mos([np.nan], None, True)


def test_fit_map_recovers_a_known_curve():
    rng = np.random.default_rng(0)
    true = (-3.0, 0.15, 50.0, 0.0, 3.0)
    x = rng.uniform(0, 100, 300)
    y = logistic5(x, *true) + rng.normal(0, 0.02, x.size)
    m = M.fit_map(x, y, score_range=(1, 5))
    assert m.source == "fitted" and m.fit["converged"] and m.fit["n"] == 300
    assert m.fit["monotone"] == "decreasing"
    assert m.domain == pytest.approx((x.min(), x.max()))
    grid = np.linspace(5, 95, 50)
    np.testing.assert_allclose(m.apply_many(grid), np.clip(logistic5(grid, *true), 1, 5), atol=0.03)
    assert m.fit["plcc_mapped"] > 0.99


def test_fit_map_needs_six_points_and_matching_lengths():
    with pytest.raises(DataError, match="at least 6"):
        M.fit_map([1, 2, 3], [1, 2, 3])
    with pytest.raises(DataError, match="differ in length"):
        M.fit_map([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6])


def test_monotone_check_and_line_free_refit():
    assert M._monotone((2.0, 1.0, 0.0, 0.0, 3.0), (-5, 5)) == "increasing"
    assert M._monotone((-2.0, 1.0, 0.0, 0.0, 3.0), (-5, 5)) == "decreasing"
    assert M._monotone((-4.0, 1.0, 0.0, 0.2, 3.0), (-20, 20)) is None  # the line turns the logistic around
    rng = np.random.default_rng(1)
    x = rng.uniform(-10, 10, 200)
    y = 3 + 1.5 * np.tanh(x / 3) + rng.normal(0, 0.05, x.size)
    params = M._fit_without_line(x, y)
    assert params is not None and params[3] == 0.0
    assert M._monotone(params, (-10, 10)) == "increasing"


def test_fitted_map_is_stored_and_used_automatically(isolated_cache):
    tool = get_tool("brisque")
    assert tool.map.source == "paper"
    fitted = M.ToolMap((0.0, 0.0, 0.0, -0.04, 5.0), "fitted", "test fit", {"n": 10}, (0.0, 100.0))
    path = M.save_fitted_map("brisque", fitted)
    assert path == isolated_cache / "maps" / "brisque.json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == M.SCHEMA_VERSION and data["tool"] == "brisque"
    assert tool.map == fitted
    assert tool.normalize(50.0) == pytest.approx(3.0)
    assert M.delete_fitted_map("brisque") is True
    assert tool.map.source == "paper"
    assert M.delete_fitted_map("brisque") is False


def test_fitted_map_for_a_pyiqa_name_gets_a_safe_file_name(isolated_cache):
    path = M.fitted_map_path("pyiqa:topiq_nr")
    assert path.parent == isolated_cache / "maps" and ":" not in path.name


def test_broken_fitted_map_is_an_error_naming_the_file(isolated_cache):
    path = M.fitted_map_path("niqe")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(DataError, match="niqe.json"):
        M.active_map("niqe")
    path.write_text(json.dumps({"schema_version": 1, "tool": "brisque", "map": {"params": [0, 0, 0, 0, 3]}}))
    with pytest.raises(DataError, match="not 'niqe'"):
        M.active_map("niqe")
