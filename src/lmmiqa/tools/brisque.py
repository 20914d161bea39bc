"""BRISQUE: Blind/Referenceless Image Spatial Quality Evaluator.

A. Mittal, A. K. Moorthy and A. C. Bovik, "No-reference image quality assessment in the spatial domain", IEEE
Transactions on Image Processing 21(12), 2012. Re-implemented in numpy after the original MATLAB release
(``brisquescore.m``, ``brisque_feature.m``): 36 features (GGD fit of the MSCN coefficients and AGGD fits of four
neighbour products, at full and half scale, MATLAB ``filter2`` zero padding and bicubic ``imresize``), scaled to
[-1, 1] and scored by the release's epsilon-SVR trained on LIVE (RBF kernel; ``brisque_svm.npz``). The release
passes the features through text files (``%f``) and ``svm-scale`` (``%g``); the same roundings are applied here,
because they move the score in the fourth significant digit.

Input: MATLAB ``rgb2gray`` of 8-bit RGB (greyscale images as they are). Scores are roughly 0 (best) to 100.

Fidelity (measured on the official values): I01 10.2594 and goldhill 8.4255 to 1e-4; the TID2013
calibration images I03, I04, I06 within 0.2 %, but I08 +10.2 % (5.903 vs 5.35827) and I19 +3.0 % (74.43 vs
72.2617). Root cause: both are JPEG images with large flat areas, and the AGGD of the neighbour products
splits at exactly zero (``vec(vec<0)``, ``vec(vec>0)``): a flat pixel whose ``I − μ`` is exactly 0 counts in
neither side, one with a floating-point residue of 1e-14 counts as a (tiny) positive product and lowers the
right deviation. Which flat pixels come out exactly zero depends on the last bits of the filter
(MATLAB's ``filter2`` runs a rank-1 window as two ``conv2`` passes with SVD-derived factors; their bits and
summation order cannot be reproduced outside MATLAB). Measured bracket: with every flat residue kept (2-D
``correlate``) I08 = 5.293 (-1.2 %) and I19 = 64.03 (-11.4 %), but then I06 = 1.0956 (+10.3 %); with every
flat residue zeroed (this implementation) I08 = 5.903, I19 = 74.43, I06 within 0.2 %. MATLAB's values lie
in between, i.e. MATLAB zeroes some flat grey levels and not others. Variants tried: separable normalized
Gaussian without zeroing (I06 -0.3 %, I08 +4.4 %, I19 -0.8 %), SVD factors in conv2 order (I06 +10.3 %, I08
-2.3 %, I19 -8.7 %), zeroing at one scale only (best: I08 +7.3 %, I19 +0.2 %); none is within 1 % on all five,
and every one without zeroing depends on platform rounding (FMA, library). The zeroing below
(:data:`lmmiqa.tools._nss.FLAT_TOLERANCE`) is kept: identical features on every platform and filter, and
the smallest error on the images without large flat areas.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmmiqa.tools._matlab import circshift_product, fspecial_gaussian, imresize
from lmmiqa.tools._nss import ShapeTables, estimate_aggd, estimate_ggd, mscn
from lmmiqa.tools.base import NR, AssetToolConfig, Tool, luminance, require_size

SVM_FILE = "brisque_svm.npz"
TABLES_FILE = "brisque_ggd_tables.npz"

#: pairwise-product directions of ``brisque_feature.m`` (MATLAB ``circshift`` offsets)
SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


def brisque_features(grey: np.ndarray, tables: ShapeTables) -> np.ndarray:
    """The 36 BRISQUE features of a 0–255 grey image (pure function)."""
    from scipy.special import gamma

    img = np.asarray(grey, dtype=np.float64)
    window = fspecial_gaussian(7, 7.0 / 6.0)
    feat: list[float] = []
    for scale in (1, 2):
        structdis = mscn(img, window, "zero")
        shape, sigma = estimate_ggd(structdis, tables)
        feat += [shape, sigma * sigma]
        pair = np.empty_like(structdis)
        for shift in SHIFTS:
            circshift_product(structdis, shift, out=pair)
            shape, left, right = estimate_aggd(pair, tables)
            const = np.sqrt(gamma(1.0 / shape)) / np.sqrt(gamma(3.0 / shape))
            mean = (right - left) * (gamma(2.0 / shape) / gamma(1.0 / shape)) * const
            feat += [shape, mean, left * left, right * right]
        if scale == 1:
            img = imresize(img, 0.5)
    return np.asarray(feat, dtype=np.float64)


def _printf_round(x: np.ndarray, fmt: str) -> np.ndarray:
    """Round-trip values through C-style text formatting (``".6f"`` = ``%f``, ``".6g"`` = ``%g``)."""
    return np.array([float(format(v, fmt)) for v in np.asarray(x, dtype=np.float64).ravel()])


def svr_predict(features: np.ndarray, svm: dict[str, np.ndarray], *, text_rounding: bool = True) -> float:
    """Score 36 features with the release's epsilon-SVR (pure function).

    ``Σ coef_i · exp(−γ‖x − sv_i‖²) − ρ`` with ``x`` the features scaled to [-1, 1] by the stored minima and
    ranges. ``text_rounding`` reproduces the release's text round trips: ``%f`` on the features, ``%g`` on the
    scaled values.
    """
    f = np.asarray(features, dtype=np.float64)
    if text_rounding:
        f = _printf_round(f, ".6f")
    x = -1.0 + 2.0 * (f - svm["feat_min"]) / svm["feat_range"]
    if text_rounding:
        x = _printf_round(x, ".6g")
    d2 = np.sum((svm["sv"] - x[None, :]) ** 2, axis=1)
    return float(svm["sv_coef"] @ np.exp(-float(svm["gamma"]) * d2) - float(svm["rho"]))


def brisque_score(grey: np.ndarray, svm: dict[str, np.ndarray], tables: ShapeTables) -> float:
    """BRISQUE of a 0–255 grey image (pure function)."""
    return svr_predict(brisque_features(grey, tables), svm)


class BRISQUE(Tool):
    """BRISQUE (Mittal et al. 2012): natural-scene statistics scored by an SVR trained on LIVE opinion scores."""

    name = "brisque"
    kind = NR
    higher_is_better = False
    typical_range = (0.0, 100.0)
    description = (
        "Spatial natural-scene statistics scored by a model trained on human ratings of synthetic "
        "distortions (LIVE: blur, white noise, JPEG, JPEG2000, transmission errors); good at those classic "
        "distortions, weaker on authentic camera images and on content it was not trained on."
    )
    citation = "Mittal, Moorthy & Bovik, IEEE TIP 2012"
    config_cls = AssetToolConfig

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> tuple[float, dict[str, Any]]:
        from lmmiqa.tools.assets import load_asset

        require_size(self.name, rgb.shape, 16, 16, "two scales of 7×7 local statistics")
        svm = load_asset(SVM_FILE, self.config.assets)
        t = load_asset(TABLES_FILE, self.config.assets)
        tables = ShapeTables(t.arrays["gamma"], t.arrays["r_ggd"], t.arrays["r_aggd"])
        value = brisque_score(luminance(rgb, "gray"), dict(svm.arrays), tables)
        return value, {"params": svm.source, "tables": t.source}
