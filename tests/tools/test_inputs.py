"""Inputs as MATLAB's ``imread`` gives them to the releases: alpha dropped, 16-bit converted like ``im2uint8``."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from lmmiqa.images import ImageLimits, ImageLoadError
from lmmiqa.tools import get_tool
from lmmiqa.tools.base import load_matlab_rgb


def _rgba(make_rgb) -> np.ndarray:
    rgb = make_rgb(1, 200, 200)
    alpha = np.full(rgb.shape[:2], 255, dtype=np.uint8)
    alpha[:100] = 0  # fully transparent top half: composited on white it would be white
    alpha[100:, :40] = 128
    return np.dstack([rgb, alpha])


def test_rgba_file_drops_alpha(make_rgb, tmp_path):
    rgba = _rgba(make_rgb)
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_array_equal(load_matlab_rgb(path), rgba[..., :3])
    np.testing.assert_array_equal(load_matlab_rgb(path.read_bytes()), rgba[..., :3])
    np.testing.assert_array_equal(load_matlab_rgb(Image.open(path)), rgba[..., :3])
    np.testing.assert_array_equal(load_matlab_rgb(rgba), rgba[..., :3])
    ref = tmp_path / "ref.png"
    Image.fromarray(rgba[..., :3]).save(ref)
    assert math.isinf(get_tool("psnr").compute(path, ref=ref))  # the colour values, as stored
    assert get_tool("niqe").compute(path) == get_tool("niqe").compute(ref)


def test_grey_alpha_and_palette_transparency(make_rgb, tmp_path):
    grey = make_rgb(2, 64, 64)[..., 0]
    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([grey, np.zeros_like(grey)]), "LA").save(la)
    np.testing.assert_array_equal(load_matlab_rgb(la), np.dstack([grey] * 3))
    pal = Image.fromarray(grey).convert("P")
    pal.info["transparency"] = 0
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    got = load_matlab_rgb(buf.getvalue())
    np.testing.assert_array_equal(got, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))


def test_sixteen_bit_converts_like_im2uint8(tmp_path):
    x = (np.arange(120 * 160, dtype=np.int64) * 3 % 65536).astype(np.uint16).reshape(120, 160)
    expected = np.floor(x / 257.0 + 0.5).astype(np.uint8)  # im2uint8: round(x/257); never a tie (257 is odd)
    path = tmp_path / "g16.png"
    Image.fromarray(x).save(path)
    assert Image.open(path).mode.startswith("I;16")
    np.testing.assert_array_equal(load_matlab_rgb(path), np.dstack([expected] * 3))
    rgb16 = np.dstack([x, x[::-1], x[:, ::-1]])
    np.testing.assert_array_equal(load_matlab_rgb(rgb16), np.floor(rgb16 / 257.0 + 0.5).astype(np.uint8))


def test_bad_alpha_inputs_are_per_image_errors(make_rgb, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_rgba(make_rgb), "RGBA").save(path)
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_matlab_rgb(cut)
    with pytest.raises(ImageLoadError, match="pixels exceeds"):
        load_matlab_rgb(path, ImageLimits(max_pixels=100))
    r = get_tool("piqe").run(str(cut))
    assert r.error is not None and "cut.png" in r.error
