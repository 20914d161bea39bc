"""Numpy re-implementations of the MATLAB functions the original IQA releases rely on (pure functions).

The published values of NIQE, BRISQUE, PIQE, SSIM, MS-SSIM and GMSD come from MATLAB code, so matching them
needs MATLAB's conventions exactly: ``rgb2gray`` and ``rgb2ycbcr`` coefficients and rounding, ``fspecial``
Gaussian windows, ``filter2``/``conv2``/``imfilter`` border handling, ``circshift`` and, above all, ``imresize``
(bicubic, Keys a = -0.5, with antialiasing when shrinking). Written from MATLAB's documented algorithms; no
MATLAB code is reproduced.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: MATLAB ``rgb2gray`` weights (the first row of the inverse of the NTSC YIQ matrix, as MATLAB computes it)
RGB2GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)

#: MATLAB ``rgb2ycbcr`` luma row for inputs in [0, 1] (BT.601, "studio swing": Y in [16, 235])
YCBCR_Y = (65.481, 128.553, 24.966)


#: image rows converted together by :func:`rgb2gray`/:func:`rgb2y` (keeps the temporaries in cache)
GREY_ROW_BLOCK = 32


def _grey_u8(rgb: np.ndarray, weights: tuple[float, float, float], ycbcr: bool) -> np.ndarray:
    """``round(w0·R + w1·G + w2·B)`` (``ycbcr``: ``round(16 + (…)/255)``) of a uint8 H×W×3 image, as float64.

    The same products, sums and rounding as converting the image to float64 first, but each channel is
    converted inside the multiplication, a block of rows at a time: no H×W×3 float64 copy and temporaries that
    stay in cache (measured faster than per-channel lookup tables, which need index conversions).
    """
    h, w = rgb.shape[:2]
    out = np.empty((h, w))
    tmp = np.empty((min(GREY_ROW_BLOCK, h), w))
    for r0 in range(0, h, GREY_ROW_BLOCK):
        r1 = min(h, r0 + GREY_ROW_BLOCK)
        o, t, px = out[r0:r1], tmp[: r1 - r0], rgb[r0:r1]
        np.multiply(px[..., 0], weights[0], out=o)
        np.multiply(px[..., 1], weights[1], out=t)
        o += t
        np.multiply(px[..., 2], weights[2], out=t)
        o += t
        if ycbcr:
            o /= 255.0
            o += 16.0
        o += 0.5
        np.floor(o, out=o)  # MATLAB round; the values are non-negative
    return np.clip(out, 0, 255, out=out)


def rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` of a uint8 H×W×3 image: the weighted sum, rounded to uint8 (as float64)."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.float64)
    if rgb.dtype == np.uint8:
        return _grey_u8(rgb, RGB2GRAY, ycbcr=False)
    x = rgb.astype(np.float64)
    g = RGB2GRAY[0] * x[..., 0] + RGB2GRAY[1] * x[..., 1] + RGB2GRAY[2] * x[..., 2]
    return np.clip(np.floor(g + 0.5), 0, 255)  # MATLAB round; the values are non-negative


def rgb2y(rgb: np.ndarray) -> np.ndarray:
    """The Y channel of MATLAB ``rgb2ycbcr`` for a uint8 H×W×3 image, rounded to uint8 (as float64).

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` with R, G, B in 0..255 (ITU-R BT.601).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.float64)
    if rgb.dtype == np.uint8:
        return _grey_u8(rgb, YCBCR_Y, ycbcr=True)
    x = rgb.astype(np.float64)
    y = 16.0 + (YCBCR_Y[0] * x[..., 0] + YCBCR_Y[1] * x[..., 1] + YCBCR_Y[2] * x[..., 2]) / 255.0
    return np.clip(np.floor(y + 0.5), 0, 255)  # MATLAB round; the values are positive


@lru_cache(maxsize=16)
def fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``: a normalized ``size``×``size`` Gaussian window."""
    half = (size - 1) / 2.0
    ax = np.arange(-half, half + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    h = np.exp(-(xx * xx + yy * yy) / (2.0 * sigma * sigma))
    h[h < np.finfo(np.float64).eps * h.max()] = 0.0
    h = h / h.sum()
    h.setflags(write=False)
    return h


@lru_cache(maxsize=16)
def gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """The normalized 1-D factor of :func:`fspecial_gaussian` (its outer product is the 2-D window)."""
    half = (size - 1) / 2.0
    ax = np.arange(-half, half + 1.0)
    g = np.exp(-(ax * ax) / (2.0 * sigma * sigma))
    g = g / g.sum()
    g.setflags(write=False)
    return g


def gaussian_valid(img: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """``filter2(fspecial('gaussian', size, sigma), img, 'valid')`` computed separably (same values to
    rounding; much faster than the direct 2-D sum)."""
    from scipy.ndimage import correlate1d

    g = gaussian_1d(size, sigma)
    r = (size - 1) // 2
    h, w = img.shape
    if h < size or w < size:
        raise ValueError(f"image {w}×{h} is smaller than the {size}×{size} window")
    tmp = correlate1d(img, g, axis=0, mode="constant")[r : h - r]
    return correlate1d(tmp, g, axis=1, mode="constant")[:, r : w - r]


def gaussian_factor(win: np.ndarray) -> np.ndarray | None:
    """The 1-D factor ``g`` of a square window when it is an ``fspecial`` Gaussian (``outer(g, g)`` to 1e-15),
    else ``None``."""
    win = np.asarray(win, dtype=np.float64)
    if win.ndim != 2 or win.shape[0] != win.shape[1] or win.shape[0] % 2 == 0:
        return None
    c = (win.shape[0] - 1) // 2
    ratio = win[c, c + 1] / win[c, c] if win[c, c] > 0 and 0 < win[c, c + 1] < win[c, c] else None
    if ratio is None:
        return None
    sigma = float(np.sqrt(-1.0 / (2.0 * np.log(ratio))))  # w(0,1)/w(0,0) = exp(-1/(2σ²))
    for s in (round(sigma * 6.0) / 6.0, round(sigma, 6), sigma):  # the release's 7/6 first: the same bits
        g = gaussian_1d(win.shape[0], s)
        if np.allclose(np.outer(g, g), win, rtol=0.0, atol=1e-15):
            return g
    return None


#: rows filtered together by the vertical pass of :func:`separable_same` (keeps its temporaries in cache)
ROW_BLOCK = 64


def separable_same(img: np.ndarray, g: np.ndarray, mode: str) -> np.ndarray:
    """``filter2(outer(g, g), img, 'same')`` for a symmetric odd-length ``g``, in two 1-D passes.

    ``mode`` is ``"constant"`` (zero padding, MATLAB ``filter2``/``conv2``) or ``"nearest"`` (edge replication,
    ``imfilter(..., 'replicate')``). Equal to the direct 2-D sum to rounding (|Δ| < 1e-12 on 0–255 images,
    2-3× faster): the columns are filtered by adding shifted rows of a padded copy (symmetric taps in pairs,
    a block of rows at a time), the rows by ``scipy.ndimage.correlate1d``.
    """
    from scipy.ndimage import correlate1d

    if mode not in ("constant", "nearest"):
        raise ValueError(f"mode must be 'constant' or 'nearest', got {mode!r}")
    img = np.asarray(img, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    n = len(g)
    r = (n - 1) // 2
    h, w = img.shape
    p = np.empty((h + 2 * r, w))
    p[r : h + r] = img
    p[:r] = 0.0 if mode == "constant" else img[0]
    p[h + r :] = 0.0 if mode == "constant" else img[-1]
    col = np.empty((h, w))
    tmp = np.empty((min(ROW_BLOCK, h), w))
    for r0 in range(0, h, ROW_BLOCK):
        r1 = min(h, r0 + ROW_BLOCK)
        out, t = col[r0:r1], tmp[: r1 - r0]
        np.multiply(p[r0 + r : r1 + r], g[r], out=out)
        for k in range(r):
            np.add(p[r0 + k : r1 + k], p[r0 + n - 1 - k : r1 + n - 1 - k], out=t)
            t *= g[k]
            out += t
    return correlate1d(col, g, axis=1, mode=mode, cval=0.0)


def correlate_same_zero(img: np.ndarray, win: np.ndarray) -> np.ndarray:
    """MATLAB ``filter2(win, img, 'same')`` (zero padding) for odd-sized windows."""
    from scipy.ndimage import correlate

    return correlate(img, win, mode="constant", cval=0.0)


def correlate_same_replicate(img: np.ndarray, win: np.ndarray) -> np.ndarray:
    """MATLAB ``imfilter(img, win, 'replicate')`` for odd-sized windows (correlation, edge replication)."""
    from scipy.ndimage import correlate

    return correlate(img, win, mode="nearest")


def circshift(a: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """MATLAB ``circshift(a, [rows cols])``: ``out(i, j) = a(i - rows, j - cols)`` (circularly)."""
    return np.roll(a, shift, axis=(0, 1))


def circshift_product(a: np.ndarray, shift: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """``a .* circshift(a, shift)`` for a 2-D array without building the shifted copy (the same products)."""
    h, w = a.shape
    s0, s1 = shift[0] % h, shift[1] % w
    out = np.empty_like(a) if out is None else out
    # circshift: out(i, j) = a(i, j) · a(i − s0, j − s1), indices taken circularly
    for r_out, r_in in ((slice(s0, h), slice(0, h - s0)), (slice(0, s0), slice(h - s0, h))):
        for c_out, c_in in ((slice(s1, w), slice(0, w - s1)), (slice(0, s1), slice(w - s1, w))):
            np.multiply(a[r_out, c_out], a[r_in, c_in], out=out[r_out, c_out])
    return out


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' bicubic kernel with a = -0.5 (MATLAB ``imresize`` 'bicubic')."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return near + far


def _contributions(in_len: int, out_len: int, scale: float, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's bicubic ``contributions``: ``(weights, 0-based indices)`` (see :func:`_contributions_full`)."""
    weights, idx0, _raw = _contributions_full(in_len, out_len, scale, antialias)
    return weights, idx0


@lru_cache(maxsize=64)
def _contributions_full(
    in_len: int, out_len: int, scale: float, antialias: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MATLAB's bicubic ``contributions`` along one dimension: ``(weights, indices)``, each out_len×taps.

    Output pixel ``x`` (1-based) sits at input coordinate ``u = x/scale + (1 − 1/scale)/2``. When shrinking with
    antialiasing the kernel is stretched by ``1/scale`` (and scaled by ``scale``). Weights are normalized to sum
    to one per output pixel, out-of-range taps are mirrored (symmetric boundary), and taps whose weight is zero
    for every output pixel are dropped, as MATLAB does. Indices are 0-based; the third array holds the 1-based
    positions before mirroring (an arithmetic progression per tap when ``1/scale`` is an integer).
    """
    kernel_width = 4.0
    if scale < 1.0 and antialias:
        width = kernel_width / scale

        def kernel(t: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * t)
    else:
        width = kernel_width
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based input positions
    weights = kernel(u[:, None] - idx)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx0 = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    weights, idx0, raw = weights[:, keep], idx0[:, keep], idx[:, keep].astype(np.int64)
    for a in (weights, idx0, raw):
        a.setflags(write=False)
    return weights, idx0, raw


def _resize_axis(img: np.ndarray, axis: int, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    """Resize a 2-D image along ``axis`` (0: rows, 1: columns), tap by tap like MATLAB's per-pixel sum (no
    BLAS: the same bits everywhere).

    When the taps step through the input regularly (``1/scale`` an integer, e.g. the 0.5 of NIQE/BRISQUE), the
    input is mirrored once at its ends and every tap reads a strided view of it instead of gathering rows or
    columns: the same products summed in the same order, without the copies.
    """
    n = img.shape[axis]
    weights, idx, raw = _contributions_full(n, out_len, scale, antialias)
    shape = (out_len, img.shape[1]) if axis == 0 else (img.shape[0], out_len)
    out = np.zeros(shape, dtype=np.float64)
    tmp = np.empty_like(out)
    steps = np.diff(raw, axis=0)
    regular = out_len > 1 and steps.size > 0 and bool(np.all(steps == steps[0, 0])) and steps[0, 0] > 0
    if regular:
        step = int(steps[0, 0])
        lo, hi = int(raw.min()), int(raw.max())
        mirror = np.concatenate([np.arange(n), np.arange(n - 1, -1, -1)])
        src = np.take(img, mirror[np.mod(np.arange(lo, hi + 1) - 1, 2 * n)], axis=axis)
    for k in range(weights.shape[1]):
        if regular:
            start = int(raw[0, k]) - lo
            sl = slice(start, start + step * (out_len - 1) + 1, step)
            view = src[sl] if axis == 0 else src[:, sl]
        else:
            view = np.take(img, idx[:, k], axis=axis)
        np.multiply(view, weights[:, k, None] if axis == 0 else weights[None, :, k], out=tmp)
        out += tmp
    return out


def _resize_rows(img: np.ndarray, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    """:func:`_resize_axis` along the rows."""
    return _resize_axis(img, 0, out_len, scale, antialias)


def _resize_cols(img: np.ndarray, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    """:func:`_resize_axis` along the columns."""
    return _resize_axis(img, 1, out_len, scale, antialias)


def imresize(img: np.ndarray, scale: float, antialias: bool = True) -> np.ndarray:
    """MATLAB ``imresize(img, scale)`` (bicubic) for a 2-D float image; no rounding (double in, double out).

    The output size is ``ceil(scale * size)``; rows are resized first, then columns (MATLAB's order when both
    dimensions share one scale).
    """
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"imresize expects a 2-D image, got shape {img.shape}")
    h, w = img.shape
    out_h, out_w = int(np.ceil(scale * h)), int(np.ceil(scale * w))
    tmp = _resize_rows(img, out_h, float(scale), bool(antialias))
    return _resize_cols(tmp, out_w, float(scale), bool(antialias))
