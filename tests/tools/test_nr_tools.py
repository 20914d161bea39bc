"""No-reference tools: MATLAB primitives, NIQE/BRISQUE/PIQE edge cases and the simple cues."""

from __future__ import annotations

import io

import numpy as np
import pytest

from lmmiqa.tools import ToolError, cues, get_tool
from lmmiqa.tools import _matlab as M
from lmmiqa.tools._nss import compute_shape_tables, estimate_aggd, estimate_ggd
from lmmiqa.tools.base import is_grey, luminance
from lmmiqa.tools.piqe import piqe_blocks, piqe_score

# --------------------------------------------------------------------------- MATLAB primitives


def test_rgb2gray_rounds_halves_up_like_matlab():
    # 0.587043074451121·G = k + 0.5 never happens exactly, so use grey pixels of the Y path: 16 + 219/255·v
    v = np.array([[[85, 85, 85]]], dtype=np.uint8)  # Y = 16 + 73.0 = 89.0 exactly; check no off-by-one
    assert M.rgb2y(v)[0, 0] == 89.0
    assert M.rgb2gray(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)).tolist() == [[0.0, 255.0]]


def test_rgb2gray_and_rgb2y_conventions():
    px = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [10, 20, 30]]], dtype=np.uint8)
    gray = M.rgb2gray(px)[0]
    np.testing.assert_array_equal(gray, [76, 150, 29, 255, np.floor(0.298936021293775 * 10 + 0.587043074451121 * 20
                                                                   + 0.114020904255103 * 30 + 0.5)])
    y = M.rgb2y(px)[0]
    np.testing.assert_array_equal(y[:4], [np.floor(16 + 65.481 + 0.5), np.floor(16 + 128.553 + 0.5),
                                          np.floor(16 + 24.966 + 0.5), 235])


def test_equal_channels_follow_the_same_conversion_as_any_rgb():
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([g, g, g], axis=-1)
    assert is_grey(rgb)
    np.testing.assert_array_equal(luminance(rgb, "y"), M.rgb2y(rgb))  # 16 + 219/255·g, as for any RGB
    np.testing.assert_array_equal(luminance(rgb, "gray"), g)  # rgb2gray leaves grey levels unchanged
    np.testing.assert_array_equal(luminance(g, "y"), g)  # a 2-D array is grey levels already


@pytest.mark.parametrize("channel", ["gray", "y"])
def test_niqe_does_not_jump_when_one_pixel_gets_colour(make_rgb, channel):
    """One changed pixel must not switch the conversion (it moved NIQE by 5.5 % on Y)."""
    grey = make_rgb(3, 200, 300)[..., 1]
    rgb = np.stack([grey, grey, grey], axis=-1)
    tinted = rgb.copy()
    tinted[100, 150, 0] ^= 1
    tool = get_tool("niqe", channel=channel)
    a, b = tool.compute(rgb), tool.compute(tinted)
    assert b == pytest.approx(a, rel=2e-3)


def test_imresize_sizes_constants_and_ramps():
    img = np.full((37, 50), 7.25)
    out = M.imresize(img, 0.5)
    assert out.shape == (19, 25)  # ceil(scale * size)
    np.testing.assert_allclose(out, 7.25, rtol=1e-14)
    # away from the borders a (separable) linear ramp is reproduced exactly at the output pixel centres
    ramp = np.add.outer(np.arange(64.0), 2 * np.arange(80.0))
    out = M.imresize(ramp, 0.5)
    u_r = 2 * np.arange(1, 33) - 0.5 - 1  # MATLAB u = x/scale + (1 − 1/scale)/2, 0-based
    u_c = 2 * np.arange(1, 41) - 0.5 - 1
    np.testing.assert_allclose(out[4:-4, 4:-4], np.add.outer(u_r, 2 * u_c)[4:-4, 4:-4], atol=1e-10)


def test_imresize_antialias_weights_match_matlab_contributions():
    weights, idx = M._contributions(8, 4, 0.5, True)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    # output pixel 1 (u = 1.5): antialiased cubic h(x) = 0.5·cubic(0.5·x) over input pixels 1..8 (mirrored)
    u = 1.5
    taps = np.arange(np.floor(u - 4), np.floor(u - 4) + 10)
    h = 0.5 * M._cubic(0.5 * (u - taps))
    h = h / h.sum()
    mirror = np.concatenate([np.arange(8), np.arange(7, -1, -1)])
    expected = np.zeros(8)
    np.add.at(expected, mirror[np.mod(taps.astype(int) - 1, 16)], h)
    got = np.zeros(8)
    np.add.at(got, idx[0], weights[0])
    np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_ggd_and_aggd_estimates_recover_known_shapes():
    from scipy.stats import gennorm

    t = compute_shape_tables()
    rng = np.random.default_rng(0)
    x = gennorm.rvs(1.5, scale=2.0, size=400_000, random_state=rng)
    shape, sigma = estimate_ggd(x, t)
    assert shape == pytest.approx(1.5, abs=0.03)
    assert sigma == pytest.approx(np.sqrt(np.mean(x * x)), rel=1e-12)  # about zero, as in the release
    g = np.abs(gennorm.rvs(2.0, size=400_000, random_state=rng))
    v = np.where(rng.random(g.size) < 0.25, -1.0 * g, 3.0 * g)  # AGGD: left scale 1, right 3 (mass 1:3)
    shape, left, right = estimate_aggd(v, t)
    assert shape == pytest.approx(2.0, abs=0.05)
    assert right / left == pytest.approx(3.0, rel=0.02)
    shape, left, right = estimate_aggd(np.abs(x), t)  # no negative values: undefined, like MATLAB
    assert shape == 0.2 and np.isnan(left)


# --------------------------------------------------------------------------- NIQE / BRISQUE / PIQE


def test_niqe_needs_two_patches():
    r = get_tool("niqe").run(np.zeros((100, 150, 3), dtype=np.uint8))
    assert r.error is not None and "two 96×96 patches" in r.error


def test_niqe_flat_image_is_an_error_not_nan():
    r = get_tool("niqe").run(np.full((192, 192, 3), 128, dtype=np.uint8))
    assert r.raw is None and r.error is not None and "undefined" in r.error


def test_niqe_and_brisque_rise_with_distortion(make_rgb):
    from scipy.ndimage import gaussian_filter

    img = make_rgb(seed=1, h=288, w=288)
    blurred = np.clip(gaussian_filter(img.astype(float), sigma=(3, 3, 0)), 0, 255).astype(np.uint8)
    for name in ("niqe", "brisque"):
        tool = get_tool(name)
        assert tool.compute(blurred) > tool.compute(img) + 1.0, name


def test_niqe_options_are_validated():
    from lmmiqa.errors import ConfigError

    with pytest.raises(ConfigError, match="channel"):
        get_tool("niqe", channel="rgb")
    with pytest.raises(ConfigError, match="patch_size"):
        get_tool("niqe", patch_size=7)
    with pytest.raises(ConfigError, match="unknown option"):
        get_tool("niqe", chanel="y")


def test_piqe_uniform_image_scores_100():
    assert piqe_score(np.full((64, 80), 90.0)) == 100.0
    assert get_tool("piqe").compute(np.full((64, 80, 3), 90, dtype=np.uint8)) == 100.0


def test_piqe_pads_to_whole_blocks_and_flags_noise():
    rng = np.random.default_rng(0)
    noisy = np.clip(128 + rng.normal(0, 40, (40, 50)), 0, 255).round()
    b = piqe_blocks(noisy)
    assert b["active"].shape == (3, 4)  # 40×50 padded to 48×64
    assert b["noise"].any()
    value, details = get_tool("piqe").measure(np.stack([noisy.astype(np.uint8)] * 3, -1))
    assert 0 <= value <= 100 and details["blocks"] == 12


# --------------------------------------------------------------------------- cues


def test_sharpness_is_laplacian_variance():
    g = np.zeros((5, 5))
    g[2, 2] = 10.0
    lap = np.zeros((3, 3))
    lap[1, 1] = -40.0
    lap[0, 1] = lap[1, 0] = lap[1, 2] = lap[2, 1] = 10.0
    assert cues.laplacian_variance(g) == pytest.approx(lap.var())
    assert cues.laplacian_variance(np.full((8, 8), 3.0)) == 0.0


def test_sharpness_drops_with_blur(make_rgb):
    from scipy.ndimage import gaussian_filter

    img = make_rgb(seed=2)
    blurred = gaussian_filter(img.astype(float), sigma=(2, 2, 0))
    assert cues.laplacian_variance(blurred) < 0.5 * cues.laplacian_variance(img)


@pytest.mark.parametrize("sigma", [5.0, 15.0])
def test_immerkaer_estimates_gaussian_noise(sigma):
    rng = np.random.default_rng(0)
    flat = np.full((256, 256), 128.0) + rng.normal(0, sigma, (256, 256))
    assert cues.immerkaer_sigma(flat) == pytest.approx(sigma, rel=0.05)
    assert cues.immerkaer_sigma(np.full((16, 16), 9.0)) == 0.0


def test_rms_contrast_and_exposure():
    half = np.zeros((10, 10, 3), dtype=np.uint8)
    half[:, 5:] = 255
    assert cues.rms_contrast(half) == pytest.approx(0.5)
    stats = cues.exposure_stats(half)
    assert stats == pytest.approx({"clipped": 1.0, "dark": 0.5, "bright": 0.5, "mean_brightness": 127.5})
    mid = np.full((4, 4, 3), 128, dtype=np.uint8)
    assert cues.exposure_stats(mid)["clipped"] == 0.0
    value, details = get_tool("exposure").measure(half)
    assert value == 1.0 and details["mean_brightness"] == 127.5


def test_colorfulness_formula():
    grey = np.full((4, 4, 3), 77, dtype=np.uint8)
    assert cues.colorfulness(grey) == 0.0
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[..., 0] = 200  # rg = 200, yb = 100 everywhere: no spread, only the mean term
    assert cues.colorfulness(red) == pytest.approx(0.3 * np.hypot(200, 100))


def test_blockiness_sees_jpeg_blocks(make_rgb):
    from PIL import Image

    img = make_rgb(seed=4, h=128, w=128)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=5)
    jpeg = np.asarray(Image.open(buf).convert("RGB"))
    assert cues.blockiness_ratio(jpeg) > 1.3
    assert cues.blockiness_ratio(img) == pytest.approx(1.0, abs=0.15)
    assert cues.blockiness_ratio(np.full((16, 16), 5.0)) == 1.0
    grid = np.zeros((16, 16))
    grid[:, 8:] = 100.0  # the only jump is on the grid
    assert cues.blockiness_ratio(grid) == np.inf


def test_cue_size_limits():
    tiny = np.zeros((2, 2, 3), dtype=np.uint8)
    for name in ("sharpness", "noise", "blockiness"):
        r = get_tool(name).run(tiny)
        assert r.error is not None and "at least" in r.error, name
    with pytest.raises(ToolError):
        get_tool("blockiness").compute(np.zeros((8, 40, 3), dtype=np.uint8))
