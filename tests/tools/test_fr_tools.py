"""Full-reference tools: PSNR formula, SSIM against scikit-image, MS-SSIM and GMSD by hand, known properties."""

from __future__ import annotations

import numpy as np
import pytest

from lmmiqa.tools import ToolError, get_tool
from lmmiqa.tools._matlab import fspecial_gaussian, rgb2gray
from lmmiqa.tools.gmsd import gms_map, gmsd
from lmmiqa.tools.psnr import psnr
from lmmiqa.tools.ssim import MS_WEIGHTS, ms_ssim, ms_ssim_terms, ssim, ssim_maps


@pytest.fixture()
def pair(make_rgb):
    ref = make_rgb(seed=3, h=200, w=232)
    rng = np.random.default_rng(7)
    dist = np.clip(ref.astype(np.float64) + rng.normal(0, 12, ref.shape), 0, 255).astype(np.uint8)
    return dist, ref


# --------------------------------------------------------------------------- PSNR


def test_psnr_exact_formula():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0] = 10  # one channel of one pixel off by 10: MSE = 100 / 48
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / (100 / 48)), rel=1e-14)
    c = np.full((4, 4, 3), 5, dtype=np.uint8)  # every value off by 5: MSE = 25
    assert psnr(a, c) == pytest.approx(10 * np.log10(255**2 / 25), rel=1e-14)


def test_psnr_is_over_all_rgb_channels(pair):
    dist, ref = pair
    mse = np.mean((dist.astype(np.float64) - ref.astype(np.float64)) ** 2)
    assert get_tool("psnr").compute(dist, ref=ref) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)


def test_psnr_identical_is_inf_and_symmetric(pair):
    dist, ref = pair
    assert psnr(ref, ref) == np.inf
    assert psnr(dist, ref) == psnr(ref, dist)


def test_psnr_matches_skimage(pair):
    metrics = pytest.importorskip("skimage.metrics")
    dist, ref = pair
    assert psnr(dist, ref) == pytest.approx(metrics.peak_signal_noise_ratio(ref, dist, data_range=255), rel=1e-12)


# --------------------------------------------------------------------------- SSIM


def test_ssim_identical_is_one(pair):
    _, ref = pair
    g = rgb2gray(ref)
    assert ssim(g, g) == pytest.approx(1.0, abs=1e-12)
    assert get_tool("ssim").compute(ref, ref=ref) == pytest.approx(1.0, abs=1e-12)


def test_ssim_properties(pair):
    dist, ref = pair
    a, b = rgb2gray(dist), rgb2gray(ref)
    s = ssim(a, b)
    assert 0.0 < s < 1.0
    assert ssim(b, a) == pytest.approx(s, rel=1e-12)  # symmetric
    smap, _ = ssim_maps(a, b)
    assert smap.shape == (a.shape[0] - 10, a.shape[1] - 10)  # 'valid' filtering with an 11×11 window
    rng = np.random.default_rng(0)
    worse = np.clip(b + rng.normal(0, 40, b.shape), 0, 255)
    assert ssim(worse, b) < s  # more noise, lower SSIM


def test_ssim_matches_skimage_away_from_borders(pair):
    metrics = pytest.importorskip("skimage.metrics")
    dist, ref = pair
    a, b = rgb2gray(dist), rgb2gray(ref)
    mean_sk, full = metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, full=True
    )
    ours, _ = ssim_maps(a, b)
    np.testing.assert_allclose(ours, full[5:-5, 5:-5], rtol=1e-10, atol=1e-12)
    assert ssim(a, b) == pytest.approx(mean_sk, rel=1e-10)  # skimage averages the same interior


def test_ssim_window_is_the_matlab_one():
    w = fspecial_gaussian(11, 1.5)
    assert w.shape == (11, 11) and w.sum() == pytest.approx(1.0, abs=1e-15)
    ax = np.arange(-5, 6)
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    np.testing.assert_allclose(w, g / g.sum(), rtol=1e-14)


def test_ssim_too_small_image():
    img = np.zeros((10, 40, 3), dtype=np.uint8)
    r = get_tool("ssim").run(img, ref=img)
    assert r.error is not None and "11×11" in r.error


# --------------------------------------------------------------------------- MS-SSIM


def _down2_by_hand(x: np.ndarray) -> np.ndarray:
    """Average each pixel with its right, lower and lower-right neighbours (mirrored at the end), keep odd rows/cols."""
    h, w = x.shape
    out = np.empty(((h + 1) // 2, (w + 1) // 2))
    for i in range(0, h, 2):
        for j in range(0, w, 2):
            i2, j2 = min(i + 1, h - 1), min(j + 1, w - 1)
            out[i // 2, j // 2] = (x[i, j] + x[i2, j] + x[i, j2] + x[i2, j2]) / 4
    return out


def test_ms_ssim_by_hand(pair):
    dist, ref = pair
    a, b = rgb2gray(dist), rgb2gray(ref)
    cs, last = [], None
    x, y = a, b
    for level in range(5):
        s_map, cs_map = ssim_maps(x, y)
        cs.append(cs_map.mean())
        last = s_map.mean()
        if level < 4:
            x, y = _down2_by_hand(x), _down2_by_hand(y)
    expected = np.prod(np.array(cs[:4]) ** np.array(MS_WEIGHTS[:4])) * last ** MS_WEIGHTS[4]
    assert ms_ssim(a, b) == pytest.approx(expected, rel=1e-12)
    ms, mcs = ms_ssim_terms(a, b)
    assert ms[0] == pytest.approx(ssim(a, b), rel=1e-12) and len(mcs) == 5


def test_ms_ssim_identical_is_one_and_size_limit(pair):
    _, ref = pair
    assert get_tool("ms_ssim").compute(ref, ref=ref) == pytest.approx(1.0, abs=1e-12)
    small = ref[:170]
    r = get_tool("ms_ssim").run(small, ref=small)
    assert r.error is not None and "176" in r.error


def test_ms_ssim_negative_term_is_an_error_not_nan():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (180, 180)).astype(np.float64)
    with pytest.raises(ValueError, match="anti-correlated"):
        ms_ssim(a, 255.0 - a)
    img = np.stack([a] * 3, axis=-1).astype(np.uint8)
    r = get_tool("ms_ssim").run(img, ref=(255 - img).astype(np.uint8))
    assert r.error is not None and "anti-correlated" in r.error


# --------------------------------------------------------------------------- GMSD


def _gmsd_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    def prep(x):
        h, w = x.shape
        p = np.zeros((h + 1, w + 1))
        p[:h, :w] = x
        avg = (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:]) / 4
        y = avg[::2, ::2]
        q = np.zeros((y.shape[0] + 2, y.shape[1] + 2))
        q[1:-1, 1:-1] = y
        gx = np.zeros_like(y)
        gy = np.zeros_like(y)
        for i in range(y.shape[0]):
            for j in range(y.shape[1]):
                win = q[i : i + 3, j : j + 3]
                gx[i, j] = (win[:, 0].sum() - win[:, 2].sum()) / 3
                gy[i, j] = (win[0, :].sum() - win[2, :].sum()) / 3
        return np.sqrt(gx**2 + gy**2)

    m1, m2 = prep(a), prep(b)
    gms = (2 * m1 * m2 + 170) / (m1**2 + m2**2 + 170)
    return float(np.std(gms, ddof=1))


def test_gmsd_by_hand():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (23, 30)).astype(np.float64)  # odd sizes exercise the zero padding
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255)
    assert gmsd(a, b) == pytest.approx(_gmsd_by_hand(a, b), rel=1e-12)


def test_gmsd_properties(pair):
    dist, ref = pair
    a, b = rgb2gray(dist), rgb2gray(ref)
    assert gmsd(b, b) == 0.0
    assert np.all(gms_map(b, b) == 1.0)
    assert gmsd(a, b) == pytest.approx(gmsd(b, a), rel=1e-12)
    assert 0.0 < gmsd(a, b) < 0.35


# --------------------------------------------------------------------------- the FR contract


@pytest.mark.parametrize("name", ["psnr", "ssim", "ms_ssim", "gmsd"])
def test_fr_tools_need_a_matching_reference(name, pair):
    dist, ref = pair
    tool = get_tool(name)
    with pytest.raises(ToolError, match="full-reference"):
        tool.compute(dist)
    r = tool.run(dist, ref=ref[:-8])
    assert r.error is not None and "differ in size" in r.error
    assert tool.run(dist).error is not None
