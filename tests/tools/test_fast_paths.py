"""The speed-ups of issue 13 keep the values: each fast path against the direct computation it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import correlate

from lmmiqa.images import ImageLimits, ImageLoadError
from lmmiqa.tools import _matlab as M
from lmmiqa.tools import _nss
from lmmiqa.tools.base import load_matlab_rgb
from lmmiqa.tools.psnr import psnr


def _colours(step: int) -> np.ndarray:
    v = np.arange(256)
    b = np.arange(0, 256, step)
    rgb = np.stack(np.meshgrid(v, v, b, indexing="ij"), axis=-1).reshape(256, -1, 3)
    return rgb.astype(np.uint8)


def test_rgb2gray_and_rgb2y_fast_conversion_is_bit_identical_to_the_formula():
    rgb = _colours(3)  # every (R, G) pair, B in steps of 3: 5.6 M colours
    x = rgb.astype(np.float64)
    gray = np.floor(M.RGB2GRAY[0] * x[..., 0] + M.RGB2GRAY[1] * x[..., 1] + M.RGB2GRAY[2] * x[..., 2] + 0.5)
    assert np.array_equal(M.rgb2gray(rgb), gray)
    y = 16.0 + (M.YCBCR_Y[0] * x[..., 0] + M.YCBCR_Y[1] * x[..., 1] + M.YCBCR_Y[2] * x[..., 2]) / 255.0
    assert np.array_equal(M.rgb2y(rgb), np.floor(y + 0.5))


def test_separable_gaussian_equals_the_2d_window():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(61, 83)).astype(np.float64)
    for size, sigma in ((7, 7.0 / 6.0), (11, 1.5)):
        win = M.fspecial_gaussian(size, sigma)
        g = M.gaussian_factor(win)
        assert g is not None
        for mode in ("constant", "nearest"):
            direct = correlate(img, win, mode=mode, cval=0.0)
            np.testing.assert_allclose(M.separable_same(img, g, mode), direct, rtol=0, atol=1e-11)
    assert M.gaussian_factor(np.ones((3, 3)) / 9.0) is None
    bent = M.fspecial_gaussian(7, 7.0 / 6.0).copy()
    bent[0, 0] += 1e-6
    assert M.gaussian_factor(bent) is None


def _jpeg_like(rng: np.random.Generator) -> np.ndarray:
    """Flat 16×16 blocks (exact-zero MSCN in their interior) next to textured ones."""
    img = np.repeat(np.repeat(rng.integers(0, 256, size=(6, 8)), 16, axis=0), 16, axis=1).astype(np.float64)
    img[:40, :64] += rng.normal(0, 9, size=(40, 64)).round()
    return np.clip(img, 0, 255)


@pytest.mark.parametrize("padding", ["zero", "replicate"])
def test_mscn_exact_zeros_do_not_depend_on_the_filter(monkeypatch, padding):
    """BRISQUE/NIQE depend on which flat pixels are exactly zero: the separable path must zero the same ones."""
    img = _jpeg_like(np.random.default_rng(1))
    win = M.fspecial_gaussian(7, 7.0 / 6.0)
    fast = _nss.mscn(img, win, padding)
    monkeypatch.setattr(_nss, "gaussian_factor", lambda w: None)  # force the direct 2-D correlation
    direct = _nss.mscn(img, win, padding)
    assert (fast == 0).sum() > 2000
    assert np.array_equal(fast == 0, direct == 0)
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-12)


def test_nearest_index_is_the_full_scan():
    t = _nss.compute_shape_tables()
    table = t.r_aggd
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-0.1, 1.0, 3000), table[rng.integers(0, len(table), 200)],
                        (table[:-1] + table[1:])[:200] / 2, [np.nan, np.inf, -np.inf, 0.0, 5.0]])
    expected = [int(np.argmin((table - v) ** 2)) if np.isfinite(v) else 0 for v in x]
    assert _nss._nearest_index(table, x).tolist() == expected
    dup = np.array([0.0, 0.1, 0.1, 0.1, 0.5, 0.5, 0.9])  # runs of equal entries: the first one, as argmin
    xs = np.array([0.1, 0.11, 0.3, 0.31, 0.5, 0.7, 1.0, -1.0])
    assert _nss._nearest_index(dup, xs).tolist() == [int(np.argmin((dup - v) ** 2)) for v in xs]


def _aggd_matlab(v: np.ndarray, t: _nss.ShapeTables) -> tuple[float, float, float]:
    """``estimateaggdparam`` written as the release does it (selected values copied out, full scan)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.sqrt(np.mean(v[v < 0] ** 2)) if (v < 0).any() else np.nan
        right = np.sqrt(np.mean(v[v > 0] ** 2)) if (v > 0).any() else np.nan
        gh = left / right
        rhat = np.mean(np.abs(v)) ** 2 / np.mean(v**2)
        rnorm = rhat * (gh**3 + 1) * (gh + 1) / (gh**2 + 1) ** 2
    idx = int(np.argmin((t.r_aggd - rnorm) ** 2)) if np.isfinite(rnorm) else 0
    return float(t.gamma[idx]), float(left), float(right)


def test_aggd_fits_match_the_release_definition_one_by_one_and_in_rows():
    t = _nss.compute_shape_tables()
    rng = np.random.default_rng(3)
    rows = rng.laplace(0, 1, size=(40, 2000)) * rng.uniform(0.2, 3.0, size=(40, 1))
    rows[::3, ::4] = 0.0  # exact zeros count in neither side
    rows[5] = np.abs(rows[5])  # no negative value: undefined, like MATLAB
    rows[6] = 0.0
    shapes, lefts, rights = _nss.estimate_aggd_rows(rows, t)
    for i, row in enumerate(rows):
        want = _aggd_matlab(row, t)
        one = _nss.estimate_aggd(row, t)
        np.testing.assert_allclose(one, want, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose((shapes[i], lefts[i], rights[i]), want, rtol=1e-12, equal_nan=True)
    assert shapes[5] == shapes[6] == 0.2 and np.isnan(lefts[5]) and np.isnan(rights[6])


def test_integer_psnr_is_the_float64_value():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, size=(97, 131, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, size=a.shape), 0, 255).astype(np.uint8)
    expected = 10.0 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    assert psnr(a, b) == expected  # exactly
    assert psnr(a.astype(np.float64), b) == expected
    assert psnr(a, a) == float("inf")


def test_imresize_columns_are_the_transposed_rows():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, size=(53, 77)).astype(np.float64)
    rows = M._resize_rows(img.T.copy(), 39, 0.5, True).T
    assert np.array_equal(M._resize_cols(img, 39, 0.5, True), rows)


def test_uint8_arrays_skip_the_pil_round_trip_but_keep_the_limits():
    a = np.zeros((20, 30, 3), dtype=np.uint8)
    assert load_matlab_rgb(a) is a
    with pytest.raises(ImageLoadError, match="exceeds"):
        load_matlab_rgb(a, ImageLimits(max_pixels=100))
    with pytest.raises(ImageLoadError):
        load_matlab_rgb(np.zeros((0, 30, 3), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (33, 50)])
def test_gmsd_downsampling_and_gradients_match_the_filters(shape):
    from lmmiqa.tools import gmsd as G

    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, size=shape).astype(np.float64)
    p = np.pad(x, ((0, 1), (0, 1)))
    full = (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:]) / 4.0  # conv2(x, ones(2)/4, 'same')
    assert np.array_equal(G._average_down2(x), full[::2, ::2])
    k = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0
    gx, gy = correlate(x, k, mode="constant"), correlate(x, k.T, mode="constant")
    np.testing.assert_allclose(G.prewitt_magnitude(x), np.sqrt(gx * gx + gy * gy), rtol=1e-13, atol=1e-12)


def test_circshift_product_is_the_product_with_the_shifted_copy():
    a = np.random.default_rng(7).normal(size=(13, 17))
    for shift in ((0, 1), (1, 0), (1, 1), (-1, 1), (1, -1), (5, -8)):
        assert np.array_equal(M.circshift_product(a, shift), a * M.circshift(a, shift))


@pytest.mark.parametrize("shape", [(130, 97), (129, 64), (64, 8)])
def test_gmsd_blockwise_grey_downsampling_is_the_full_one(shape):
    from lmmiqa.tools import gmsd as G

    rgb = np.random.default_rng(8).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    assert np.array_equal(G.grey_down2(rgb), G._average_down2(M.rgb2gray(rgb)))
