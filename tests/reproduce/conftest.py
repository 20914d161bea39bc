"""Fixtures of the ``lmmiqa reproduce`` tests: the test scorer on ``sys.path``; a miniature KonIQ-10k folder made
of real rows of the shared label files (generated images); a small synthetic ladder as a stand-in dataset."""

from __future__ import annotations

import csv
import pathlib
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # paper_scorer:SharpPaperScorer


def blurred(seed: int, blur: float, size: int = 32):
    """A textured image blurred by ``blur`` (0 = sharp)."""
    from PIL import ImageFilter

    from lmmiqa.testing import make_image

    img = make_image(size, size, seed=seed)
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else img


@pytest.fixture(scope="session")
def mini_koniq(tmp_path_factory, shared_dir) -> pathlib.Path:
    """20 official-test and 12 training rows of KonIQ-10k (the shared label files, both layouts), with generated
    images blurred so that sharper means higher MOS; the folder holds KonIQ-10k.csv and the official-sets file."""
    labels = shared_dir / "data" / "labels"
    official = labels / "KonIQ-10k-official-sets.csv"
    collection = labels / "KonIQ-10k.csv"
    if not official.is_file() or not collection.is_file():
        pytest.skip(f"KonIQ label files not found in {labels}")
    with official.open(newline="") as f:
        rows = list(csv.DictReader(f))
    picked = [r for r in rows if r["set"] == "test"][:20] + [r for r in rows if r["set"] == "training"][:12]
    names = {r["image_name"] for r in picked}
    with collection.open(newline="") as f:
        coll = [r for r in csv.DictReader(f) if r["dis_img_path"].rsplit("/", 1)[-1] in names]
    root = tmp_path_factory.mktemp("mini_koniq")
    mos = np.array([float(r["MOS"]) for r in picked])
    lo, hi = mos.min(), mos.max()
    for i, r in enumerate(picked):
        rel = next(c["dis_img_path"] for c in coll if c["dis_img_path"].endswith("/" + r["image_name"]))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        blurred(i % 4, float(3.0 * (hi - float(r["MOS"])) / (hi - lo))).save(path, format="JPEG", quality=95)
    for src, rows_, cols in ((official, picked, list(rows[0])), (collection, coll, ["dis_img_path", "dis_type", "score"])):
        with (root / src.name).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows_)
    return root


@pytest.fixture(scope="session")
def ladder(tmp_path_factory) -> pathlib.Path:
    """A synthetic ladder: 3 references x 2 distortions x 5 severities = 30 images of 32 pixels (FR)."""
    from lmmiqa.data.synth import make_ladder
    from lmmiqa.testing import make_image

    root = tmp_path_factory.mktemp("ladder")
    make_ladder(root, images=[(n, make_image(40, 40, seed=i)) for i, n in enumerate("abc")],
                types=["gaussian_blur", "jpeg"], size=32)
    return root
