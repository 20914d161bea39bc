"""NIQE: Naturalness Image Quality Evaluator.

A. Mittal, R. Soundararajan and A. C. Bovik, "Making a 'completely blind' image quality analyzer", IEEE Signal
Processing Letters 20(3), 2012. Re-implemented in numpy after the original MATLAB release
(``computequality.m``): 96×96 patches without overlap at two scales (the second one from MATLAB's bicubic,
antialiased ``imresize`` by 1/2), 18 AGGD features per patch and scale, a multivariate Gaussian fitted to the
patches, and the Mahalanobis-like distance to the pristine model shipped with the release
(``niqe_pris_params.npz``, shipped with lmmiqa, see :mod:`lmmiqa.tools.assets`).

Input convention (METHODS §8): the release's ``computequality.m`` converts an RGB input with MATLAB ``rgb2gray``
(rounded to uint8), no border crop; that default reproduces the five official calibration values within
0.6 % (I04 to 1e-9). ``channel="y"`` uses the Y of MATLAB ``rgb2ycbcr`` (BT.601, 16–235, rounded) instead,
BasicSR's convention, which gives BasicSR's published baboon value 5.72957 (the default is 0.35 % off it).
Every RGB input is converted, also one whose three channels are equal (a greyscale file is read as three equal
channels; ``rgb2gray`` leaves it unchanged, ``y`` maps it to 16–235, as BasicSR does).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from lmmiqa.errors import ConfigError
from lmmiqa.tools._matlab import imresize
from lmmiqa.tools._nss import ShapeTables, compute_shape_tables, estimate_aggd_rows, mscn
from lmmiqa.tools.base import NR, AssetToolConfig, Tool, ToolError, luminance

PARAMS_FILE = "niqe_pris_params.npz"

#: pairwise-product directions of the release's ``computefeature`` (MATLAB ``circshift`` offsets)
SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))

#: patches processed together by :func:`patches_features` (16 × 96² float64 = 1.2 MB per temporary)
PATCH_CHUNK = 16

_TABLES: ShapeTables | None = None


def _tables() -> ShapeTables:
    global _TABLES
    if _TABLES is None:  # idempotent, so a race only computes it twice
        _TABLES = compute_shape_tables()
    return _TABLES


def _aggd_betas(shape: np.ndarray, left_std: np.ndarray, right_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gamma

    c = np.sqrt(gamma(1.0 / shape) / gamma(3.0 / shape))
    return left_std * c, right_std * c


def patches_features(patches: np.ndarray, tables: ShapeTables | None = None) -> np.ndarray:
    """The 18 NIQE features of each MSCN patch (``n × p × p`` → ``n × 18``), all patches at once: AGGD shape
    and mean scale, then for each of 4 neighbour products (``circshift`` within the patch, as the release's
    ``computefeature``) its shape, mean, left and right scales."""
    from scipy.special import gamma

    t = tables or _tables()
    patches = np.asarray(patches, dtype=np.float64)
    if patches.shape[0] > PATCH_CHUNK:  # a few patches at a time: the temporaries stay in the CPU caches
        return np.concatenate(
            [patches_features(patches[i : i + PATCH_CHUNK], t) for i in range(0, patches.shape[0], PATCH_CHUNK)]
        )
    n = patches.shape[0]
    rows = patches.reshape(n, -1)
    shape, left, right = estimate_aggd_rows(rows, t)
    bl, br = _aggd_betas(shape, left, right)
    feat = [shape, (bl + br) / 2.0]
    for shift in SHIFTS:
        pair = rows * np.roll(patches, shift, axis=(1, 2)).reshape(n, -1)
        shape, left, right = estimate_aggd_rows(pair, t)
        bl, br = _aggd_betas(shape, left, right)
        mean = (br - bl) * (gamma(2.0 / shape) / gamma(1.0 / shape))
        feat += [shape, mean, bl, br]
    return np.stack(feat, axis=1)


def patch_features(patch: np.ndarray, tables: ShapeTables | None = None) -> np.ndarray:
    """The 18 NIQE features of one MSCN patch (see :func:`patches_features`)."""
    return patches_features(np.asarray(patch, dtype=np.float64)[None], tables)[0]


def niqe_features(grey: np.ndarray, window: np.ndarray, patch_size: int = 96) -> np.ndarray:
    """Per-patch features (patches × 36: 18 at full scale, then 18 at half scale) of a 0–255 grey image.

    The image is cropped to a whole number of patches first (bottom and right), as in the release; patches
    are taken column by column (MATLAB's order).
    """
    img = np.asarray(grey, dtype=np.float64)
    nh, nw = img.shape[0] // patch_size, img.shape[1] // patch_size
    img = img[: nh * patch_size, : nw * patch_size]
    scales = []
    for scale in (1, 2):
        structdis = mscn(img, window, "replicate")
        p = patch_size // scale
        patches = structdis.reshape(nh, p, nw, p).transpose(2, 0, 1, 3).reshape(nw * nh, p, p)
        scales.append(patches_features(patches))
        if scale == 1:
            img = imresize(img, 0.5)
    return np.concatenate(scales, axis=1)


def niqe_score(
    grey: np.ndarray,
    mu_pris: np.ndarray,
    cov_pris: np.ndarray,
    window: np.ndarray,
    patch_size: int = 96,
) -> float:
    """NIQE of a 0–255 grey image against a pristine model (pure function).

    ``sqrt((μp − μd)ᵀ pinv((Σp + Σd)/2) (μp − μd))`` with the distorted image's patch mean ``μd`` (NaN-aware)
    and covariance ``Σd`` (patches with a NaN feature left out), as MATLAB's ``nanmean``/``nancov``/``pinv``.
    """
    feats = niqe_features(grey, window, patch_size)
    with warnings.catch_warnings():  # an all-NaN column (flat image) is handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        mu_d = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]
    if complete.shape[0] < 2 or not np.all(np.isfinite(mu_d)):
        return float("nan")
    cov_d = np.cov(complete, rowvar=False)
    a = (np.asarray(cov_pris, dtype=np.float64) + cov_d) / 2.0
    inv = np.linalg.pinv(a, rcond=max(a.shape) * np.finfo(np.float64).eps)  # MATLAB pinv's tolerance
    diff = np.asarray(mu_pris, dtype=np.float64).ravel() - mu_d
    return float(np.sqrt(diff @ inv @ diff))


@dataclass
class NIQEConfig(AssetToolConfig):
    """NIQE options.

    Attributes:
        channel: ``"gray"`` (MATLAB ``rgb2gray``, the original release; default) or ``"y"`` (Y of YCbCr,
            BT.601, BasicSR's convention).
        patch_size: side of the square patches (96 in the release and in the pristine model).
    """

    channel: str = "gray"
    patch_size: int = 96

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channel not in ("y", "gray"):
            raise ConfigError(f"channel must be 'y' or 'gray', got {self.channel!r}")
        if int(self.patch_size) < 8 or int(self.patch_size) % 2:
            raise ConfigError(f"patch_size must be an even number >= 8, got {self.patch_size}")
        self.patch_size = int(self.patch_size)


class NIQE(Tool):
    """NIQE (Mittal et al. 2012): distance of the image's natural-scene statistics from pristine photos."""

    name = "niqe"
    kind = NR
    higher_is_better = False
    typical_range = (2.0, 15.0)
    description = (
        "Naturalness: how far the local statistics of the image are from those of pristine photos; general "
        "no-reference measure that rises with blur, noise, compression and other unnatural artefacts, "
        "without training on human scores. Unreliable on small images and on graphics/text."
    )
    citation = "Mittal, Soundararajan & Bovik, IEEE SPL 2012"
    config_cls = NIQEConfig

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> tuple[float, dict[str, object]]:
        from lmmiqa.tools.assets import load_asset

        cfg: NIQEConfig = self.config
        p = cfg.patch_size
        h, w = rgb.shape[:2]
        if (h // p) * (w // p) < 2:
            raise ToolError(f"niqe needs at least two {p}×{p} patches; the image is {w}×{h}")
        asset = load_asset(PARAMS_FILE, cfg.assets)
        params = asset.arrays
        grey = luminance(rgb, cfg.channel)
        value = niqe_score(grey, params["mu_pris_param"], params["cov_pris_param"], params["gaussian_window"], p)
        return value, {"channel": cfg.channel, "patches": (h // p) * (w // p), "params": asset.source}
