"""``lmmiqa tools``: list, run (text/json/jsonl, FR references, bad images, exit status), fit, assets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lmmiqa.cli import main
from lmmiqa.tools import maps as M


@pytest.fixture()
def pngs(tmp_path, make_rgb):
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(make_rgb(seed=i, h=192, w=192)).save(p)
        paths.append(str(p))
    rng = np.random.default_rng(0)
    noisy = np.clip(np.asarray(Image.open(paths[0])) + rng.normal(0, 10, (192, 192, 3)), 0, 255).astype(np.uint8)
    p = tmp_path / "noisy.png"
    Image.fromarray(noisy).save(p)
    paths.append(str(p))
    return paths


def test_list(capsys):
    assert main(["tools", "list", "--no-pyiqa"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("blockiness") and "niqe" in out and "map:paper" in out
    assert main(["tools", "list", "--kind", "fr", "--format", "json", "--no-pyiqa"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {"psnr", "ssim", "ms_ssim", "gmsd"}
    assert {"kind", "higher_is_better", "typical_range", "description", "map_source"} <= set(rows[0])


def test_run_nr_text(images_dir, capsys):
    path = str(images_dir / "rated" / "baboon.png")
    assert main(["tools", "run", "niqe", path]) == 0
    assert capsys.readouterr().out.splitlines() == ["image\traw", f"{path}\t5.74964"]  # rgb2gray, the original release
    assert main(["tools", "run", "niqe", path, "--option", "channel=y"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"{path}\t5.72957"  # BasicSR's published value


def test_run_fr_normalized(pngs, capsys):
    assert main(["tools", "run", "ssim", pngs[2], "--ref", pngs[0], "--normalized"]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header == "image\traw\tnormalized"
    image, raw, normalized = row.split("\t")
    assert image == pngs[2] and 0 < float(raw) < 1 and 1 <= float(normalized) <= 5


def test_run_fr_one_reference_per_input(pngs, capsys):
    assert main(["tools", "run", "psnr", pngs[0], pngs[2], "--ref", pngs[0], "--ref", pngs[0]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert lines[0] == f"{pngs[0]}\tinf"
    assert float(lines[1].split("\t")[1]) > 20


def test_run_json_one_object_per_image(images_dir, tmp_path, capsys):
    a, b = str(images_dir / "rated" / "I01.BMP"), str(images_dir / "rated" / "goldhill.gif")
    assert main(["tools", "run", "brisque", a, b, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [a, b]
    for r, published in zip(rows, (10.2594, 8.4255)):
        assert {"tool", "image", "raw", "normalized"} <= set(r)
        assert r["tool"] == "brisque" and r["raw"] == pytest.approx(published, abs=1e-4)
        assert 1 <= r["normalized"] <= 5 and r["error"] is None


def test_run_jsonl_and_folders(pngs, tmp_path, capsys):
    assert main(["tools", "run", "sharpness", str(tmp_path), "--format", "jsonl", "--workers", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["image"] for r in rows) == sorted(pngs)


def test_bad_images_give_error_lines_and_status(pngs, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    assert main(["tools", "run", "noise", pngs[0], str(bad)]) == 0  # one succeeded
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()[1:]
    assert lines[1].startswith(f"{bad}\tERROR\t") and str(bad) in captured.err
    assert main(["tools", "run", "noise", str(bad), str(tmp_path / "missing.png")]) == 1  # none succeeded
    captured = capsys.readouterr()
    assert captured.out.count("ERROR") == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tools", "run", "ssim", "x.png"], "full-reference"),
        (["tools", "run", "niqe", "x.png", "--ref", "y.png"], "no-reference"),
        (["tools", "run", "nique", "x.png"], "did you mean 'niqe'"),
        (["tools", "run", "niqe", "x.png", "--option", "chanel=y"], "unknown option"),
        (["tools", "run", "niqe", "x.png", "--option", "novalue"], "KEY=VALUE"),
        (["tools", "run", "psnr", "a.png", "b.png", "c.png", "--ref", "r1", "--ref", "r2"], "one --ref"),
        (["tools", "fit", "--tool", "niqe"], "--dataset NAME"),
    ],
)
def test_usage_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_parameter_file_is_a_per_image_error(pngs, capsys, tmp_path, monkeypatch):
    from lmmiqa.tools import assets

    monkeypatch.setattr(assets, "PACKAGE_DIR", tmp_path / "stripped")  # an incomplete installation
    assert main(["tools", "run", "niqe", pngs[0]]) == 1
    out = capsys.readouterr().out
    assert "niqe_pris_params.npz" in out and "reinstall" in out


@pytest.fixture()
def ladder(tmp_path):
    from lmmiqa.data.synth import make_ladder

    root = tmp_path / "ladder"
    make_ladder(root, severities=5, types=["gaussian_blur", "jpeg"], size=64, max_images=2)
    return root


def test_fit_stores_a_map_that_is_then_used(ladder, pngs, capsys):
    assert main(["tools", "fit", "--tool", "sharpness", "--dataset", "synthetic", "--root", str(ladder),
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tool"] == "sharpness" and out["stored"].endswith("sharpness.json")
    fit = out["map"]["fit"]
    assert fit["n"] == 20 and fit["n_failed"] == 0 and fit["dataset"] == "synthetic" and fit["synthetic"] is True
    assert fit["srcc_raw"] > 0  # sharper = better
    assert M.active_map("sharpness").source == "fitted"
    assert main(["tools", "run", "sharpness", pngs[0], "--format", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["details"]["map"] == "fitted"
    assert main(["tools", "fit", "--tool", "sharpness", "--reset"]) == 0
    assert "removed" in capsys.readouterr().out
    assert M.active_map("sharpness").source == "synthetic"


def test_fit_fr_tool_with_labels_csv_and_dry_run(ladder, capsys):
    argv = ["tools", "fit", "--tool", "psnr", "--labels", str(ladder / "labels.csv"), "--root", str(ladder),
            "--ref-column", "ref_img_path", "--score-range", "1", "5", "--dry-run", "--workers", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "psnr: fitted on 20 images" in out and "not stored (--dry-run)" in out
    assert M.load_fitted_map("psnr") is None


def test_fit_fr_tool_without_references_is_a_usage_error(ladder, tmp_path, capsys):
    labels = tmp_path / "nr.csv"
    rows = (ladder / "labels.csv").read_text().splitlines()
    labels.write_text("\n".join(",".join(r.split(",")[:1] + r.split(",")[3:4]) for r in rows) + "\n")
    argv = ["tools", "fit", "--tool", "ssim", "--labels", str(labels), "--root", str(ladder)]
    assert main(argv) == 2
    assert "reference column" in capsys.readouterr().err


def test_assets_command(capsys):
    assert main(["tools", "assets"]) == 0
    out = capsys.readouterr().out
    assert out.count("official") == 3 and "lmmiqa (shipped)" in out and "MIT" in out and "Apache-2.0" in out


def test_assets_command_says_how_to_fix_what_is_missing(capsys, tmp_path, monkeypatch):
    from lmmiqa.tools import assets

    monkeypatch.setattr(assets, "PACKAGE_DIR", tmp_path / "stripped")
    assert main(["tools", "assets", "--format", "json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert all(r["found"] is None and "reinstall" in r["fix"] for r in rows)
    assert main(["tools", "assets"]) == 1
    out = capsys.readouterr().out
    assert out.count("MISSING") == 3 and out.count("fix:") == 3 and "--assets" in out


def test_assets_command_with_a_wrong_folder(capsys, tmp_path):
    assert main(["tools", "assets", "--assets", str(tmp_path / "typo")]) == 1
    out = capsys.readouterr().out
    assert "does not exist" in out and "drop --assets" in out
