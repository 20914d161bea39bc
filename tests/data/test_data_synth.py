"""Synthetic distortion ladders: layout, labels, determinism, monotone severities, CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmmiqa.cli import main
from lmmiqa.data.synth import DISTORTIONS, distort, make_ladder, pseudo_mos
from lmmiqa.errors import ConfigError, DataError, UnknownNameError


def test_ladder_layout_and_labels(tmp_path):
    ds = make_ladder(tmp_path / "lad", severities=5, size=32, max_images=2)
    assert len(DISTORTIONS) >= 8
    assert len(ds) == 2 * len(DISTORTIONS) * 5
    assert ds.name == "synthetic" and ds.synthetic and ds.full_reference and ds.higher_is_better
    rows = list(csv.DictReader((tmp_path / "lad" / "labels.csv").open()))
    assert list(rows[0]) == ["dis_img_path", "dis_type", "ref_img_path", "score", "severity", "synthetic"]
    assert {r["synthetic"] for r in rows} == {"1"}
    assert {float(r["score"]) for r in rows} == {4.2, 3.4, 2.6, 1.8, 1.0}
    note = (tmp_path / "lad" / "SYNTHETIC.txt").read_text()
    assert "NOT human opinion" in note and "5 - 4 * severity / 5" in note
    for it in ds.items[:5]:
        assert Path(it.path).is_file() and Path(it.ref).is_file()
        assert Image.open(it.path).size == (32, 32)
    assert len(set(ds.select("seed:0").groups())) == 1  # 2 references: one each side


def test_pseudo_mos_is_documented_formula():
    assert pseudo_mos(1, 5) == 4.2 and pseudo_mos(5, 5) == 1.0 and pseudo_mos(2, 4) == 3.0
    with pytest.raises(ConfigError):
        pseudo_mos(0, 5)


def test_ladder_is_deterministic_for_a_seed(tmp_path):
    a = make_ladder(tmp_path / "a", size=24, max_images=1, types=["gaussian_noise", "jpeg"], seed=3)
    b = make_ladder(tmp_path / "b", size=24, max_images=1, types=["gaussian_noise", "jpeg"], seed=3)
    c = make_ladder(tmp_path / "c", size=24, max_images=1, types=["gaussian_noise"], seed=4)
    for x, y in zip(a, b):
        assert Path(x.path).read_bytes() == Path(y.path).read_bytes()
    noisy_a = np.asarray(Image.open(a.items[0].path))
    noisy_c = np.asarray(Image.open(c.items[0].path))
    assert not np.array_equal(noisy_a, noisy_c)


def test_severities_are_monotone():
    from lmmiqa.data.synth import builtin_images, square

    refs = [np.asarray(square(img, 128)) for _, img in builtin_images()[:2]]
    for kind in DISTORTIONS:
        for ref in refs:
            err = [np.mean((distort(ref, kind, s, 5).astype(float) - ref) ** 2) for s in range(1, 6)]
            assert np.all(np.diff(err) > 0), (kind, err)


def test_folder_input_and_errors(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("one", "two"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(src / f"{name}.png")
    ds = make_ladder(tmp_path / "out", images=src, severities=2, types=["contrast"], size=16)
    assert sorted({it.ref_id for it in ds}) == ["refs/one.png", "refs/two.png"] and len(ds) == 4
    with pytest.raises(UnknownNameError, match="known: brightness"):
        make_ladder(tmp_path / "x", types=["blurr"], size=16)
    with pytest.raises(DataError, match="image folder not found"):
        make_ladder(tmp_path / "x", images=tmp_path / "out" / "SYNTHETIC.txt", size=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        make_ladder(tmp_path / "x", images=tmp_path / "empty", size=16)
    with pytest.raises(ConfigError, match="severities"):
        make_ladder(tmp_path / "x", severities=0)


def test_synth_cli(tmp_path, capsys):
    rc = main(["synth", "--out", str(tmp_path / "l"), "--severities", "3", "--size", "16", "--max-images", "1",
               "--types", "jpeg", "pixelate"])
    assert rc == 0
    assert "6 distorted images (1 references x 2 types x 3 severities)" in capsys.readouterr().out
    rc = main(["levels-bound", "--dataset", "synthetic", "--root", str(tmp_path / "l"), "--format", "csv"])
    assert rc == 0
