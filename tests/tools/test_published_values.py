"""Every tool against published values, and frozen regression values on the calibration pairs.

Published (``../shared/data/README.md``): baboon NIQE 5.72957 (BasicSR: Y of YCbCr, no border crop; our
``channel="y"``), I01 BRISQUE 10.2594, goldhill BRISQUE 8.4255. The NIQE default is the original release's
``rgb2gray`` (METHODS §8): it matches the five official calibration values within 1 % and baboon within 0.35 %.

Calibration pairs (five TID2013 pairs, ``../shared/data/images/calibration``): the values below were computed
by this implementation after it matched the published values, and are frozen as regressions. Where the MATLAB
results for these pairs are public (IQA-PyTorch's ``ResultsCalibra/results_official.csv``: NIQE/BRISQUE on
``rgb2gray``, PIQE, SSIM, MS-SSIM, GMSD, PSNR) they are checked too, with the tolerance each tool reaches:
PIQE, SSIM, GMSD and PSNR match to the printed digits; NIQE within 0.6 % (I04 to 1e-9); BRISQUE to 0.2 % on
I03/I04/I06 but +10 % on I08 and +3 % on I19, whose MATLAB result hinges on which pixels of flat JPEG blocks
have an exactly-zero ``I − μ`` (see :mod:`lmmiqa.tools.brisque` and ``test_brisque_flat_pixel_root_cause``);
MS-SSIM differs by up to 0.5 % on I03/I19 (``msssim.m`` followed as documented).
"""

from __future__ import annotations

import pytest

from lmmiqa.tools import get_tool

NAMES = ("I03", "I04", "I06", "I08", "I19")

# frozen regression values (this implementation), distorted images / pairs
FROZEN_NR = {
    "niqe": (15.745960008648382, 3.654921523537949, 3.234327579551102, 3.2020138021469005, 8.666865955746363),
    "brisque": (94.64082901, -0.1076792265, 0.9910887632, 5.903228112, 74.4340356),
    "piqe": (100.0, 21.62438429, 35.864543, 41.14749939, 76.94854535),
    "sharpness": (0.9299818462, 305.2692676, 2338.794084, 3616.107906, 1409.211988),
    "noise": (0.1845797312, 2.186015981, 4.624931361, 4.899067867, 0.8724812897),
    "contrast": (0.1372536669, 0.1346882577, 0.2368809103, 0.2507739796, 0.2073898409),
    "exposure": (0.0, 0.001973470052, 0.0007476806641, 0.01805623372, 0.0007578531901),
    "colorfulness": (78.30438505, 4.32390497, 14.20710237, 33.45779049, 44.40115008),
    "blockiness": (1.00049864, 0.9700141411, 1.001660629, 0.9773777612, 2.890196007),
}
FROZEN_FR = {
    "psnr": (21.11363388, 20.9871962, 27.01387101, 23.30025547, 21.61865002),
    "ssim": (0.6993365268, 0.9977533288, 0.9989080188, 0.9669008736, 0.6518770003),
    "ms_ssim": (0.669978656, 0.9996338018, 0.9998225921, 0.9565270258, 0.8417894225),
    "gmsd": (0.2203476395, 0.0005220585051, 0.000448281481, 0.134631933, 0.2049964936),
}

# MATLAB values published in IQA-PyTorch's calibration table (NIQE/BRISQUE computed on rgb2gray)
MATLAB = {
    "niqe_gray": (15.7536293917814, 3.65492152353770, 3.23547743716998, 3.18403333858339, 8.63519663862637),
    "brisque": (94.6421, -0.107618, 0.992889, 5.35827, 72.2617),
    "piqe": (100.00, 21.62, 35.86, 41.15, 76.95),
    "ssim": (0.6993, 0.9978, 0.9989, 0.9669, 0.6519),
    "ms_ssim": (0.6733, 0.9996, 0.9998, 0.9566, 0.8462),
    "gmsd": (0.220347639470143, 0.0005220585050504579, 0.0004482814810014102, 0.134631933046914,
             0.204996493556054),
    "psnr": (21.11, 20.99, 27.01, 23.30, 21.62),
}


# --------------------------------------------------------------------------- published values


def test_niqe_baboon_published(images_dir):
    path = images_dir / "rated" / "baboon.png"
    value = get_tool("niqe", channel="y").compute(path)  # BasicSR's convention reproduces its value
    assert value == pytest.approx(5.72957, abs=1e-5)
    default = get_tool("niqe").compute(path)  # the release's rgb2gray: within 0.35 %
    assert default == pytest.approx(5.72957, rel=0.004) and default != pytest.approx(value, rel=1e-3)


@pytest.mark.parametrize(("image", "published"), [("I01.BMP", 10.2594), ("goldhill.gif", 8.4255)])
def test_brisque_published(images_dir, image, published):
    value = get_tool("brisque").compute(images_dir / "rated" / image)
    assert value == pytest.approx(published, rel=0.01)
    assert value == pytest.approx(published, abs=1e-4)


def test_niqe_default_matches_the_official_calibration_values(images_dir):
    """The default (rgb2gray, as computequality.m) is within 1 % of all five official values; Y of YCbCr is not."""
    default = [get_tool("niqe").compute(_dist(images_dir, n)) for n in NAMES]
    assert default == pytest.approx(MATLAB["niqe_gray"], rel=0.01)
    assert default[1] == pytest.approx(MATLAB["niqe_gray"][1], rel=1e-9)
    y = [get_tool("niqe", channel="y").compute(_dist(images_dir, n)) for n in NAMES]
    assert max(abs(a / b - 1) for a, b in zip(y, MATLAB["niqe_gray"])) > 0.03  # I04 is 3.8 % off on Y


# --------------------------------------------------------------------------- calibration: frozen regressions


@pytest.mark.parametrize("tool", sorted(FROZEN_NR))
def test_calibration_nr_frozen(images_dir, tool):
    t = get_tool(tool)
    got = [t.compute(images_dir / "calibration" / "dist" / f"{n}.bmp") for n in NAMES]
    assert got == pytest.approx(FROZEN_NR[tool], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("tool", sorted(FROZEN_FR))
def test_calibration_fr_frozen(images_dir, tool):
    t = get_tool(tool)
    cal = images_dir / "calibration"
    got = [t.compute(cal / "dist" / f"{n}.bmp", ref=cal / "ref" / f"{n}.bmp") for n in NAMES]
    assert got == pytest.approx(FROZEN_FR[tool], rel=1e-6, abs=1e-9)


# --------------------------------------------------------------------------- calibration: public MATLAB values


def _dist(images_dir, n):
    return images_dir / "calibration" / "dist" / f"{n}.bmp"


def _ref(images_dir, n):
    return images_dir / "calibration" / "ref" / f"{n}.bmp"


def test_calibration_matches_matlab_piqe(images_dir):
    got = [get_tool("piqe").compute(_dist(images_dir, n)) for n in NAMES]
    assert got == pytest.approx(MATLAB["piqe"], abs=0.006)


@pytest.mark.parametrize(("tool", "digits"), [("ssim", 4), ("gmsd", 12), ("psnr", 2)])
def test_calibration_matches_matlab_fr(images_dir, tool, digits):
    t = get_tool(tool)
    got = [t.compute(_dist(images_dir, n), ref=_ref(images_dir, n)) for n in NAMES]
    assert got == pytest.approx(MATLAB[tool], abs=0.6 * 10.0**-digits)


def test_calibration_ms_ssim_close_to_matlab(images_dir):
    t = get_tool("ms_ssim")
    got = [t.compute(_dist(images_dir, n), ref=_ref(images_dir, n)) for n in NAMES]
    assert got == pytest.approx(MATLAB["ms_ssim"], rel=0.006)


def test_calibration_niqe_gray_close_to_matlab(images_dir):
    t = get_tool("niqe", channel="gray")
    got = [t.compute(_dist(images_dir, n)) for n in NAMES]
    # I04 is reproduced to 1e-10; the JPEG-flat images I08/I19 within 0.6 %
    assert got[1] == pytest.approx(MATLAB["niqe_gray"][1], rel=1e-9)
    assert got == pytest.approx(MATLAB["niqe_gray"], rel=0.006)


def test_calibration_brisque_close_to_matlab(images_dir):
    t = get_tool("brisque")
    got = [t.compute(_dist(images_dir, n)) for n in NAMES]
    for n, g, m in zip(NAMES, got, MATLAB["brisque"]):
        # 0–100 scale: I03/I04/I06 within 0.01 (0.2 %); I08 (+10 %) and I19 (+3 %) are off by the measured
        # flat-pixel effect (test_brisque_flat_pixel_root_cause), frozen here so that they cannot get worse
        assert abs(g - m) < {"I08": 0.6, "I19": 2.2}.get(n, 0.01), n


def test_brisque_flat_pixel_root_cause(images_dir, monkeypatch):
    """Why I08/I19 are off: the MATLAB values lie between "every flat residue kept" and "every one zeroed".

    Which flat pixels have an exactly-zero ``I − μ`` decides on which AGGD side they count; MATLAB's filter2
    bits zero some flat grey levels and not others (see lmmiqa.tools.brisque). This pins the measured bracket.
    """
    from lmmiqa.tools import _nss

    t = get_tool("brisque")
    zeroed = {n: t.compute(_dist(images_dir, n)) for n in ("I06", "I08", "I19")}
    monkeypatch.setattr(_nss, "FLAT_TOLERANCE", 0.0)
    monkeypatch.setattr(_nss, "gaussian_factor", lambda w: None)  # the 2-D filter, residues as they come
    kept = {n: t.compute(_dist(images_dir, n)) for n in ("I06", "I08", "I19")}
    matlab = dict(zip(NAMES, MATLAB["brisque"]))
    for n in ("I08", "I19"):
        assert kept[n] < matlab[n] < zeroed[n], n
    # zeroing is what keeps the image without large flat areas right
    assert zeroed["I06"] == pytest.approx(matlab["I06"], rel=0.005)
    assert kept["I06"] > 1.05 * matlab["I06"]
