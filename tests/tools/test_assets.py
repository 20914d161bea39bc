"""Parameter files: shipped inside the package (no download), user folders first, clear fixes when missing."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lmmiqa.tools import assets, get_tool

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_shipped_files_are_the_official_ones_with_their_licences(params_dir):
    for spec in assets.ASSETS.values():
        shipped = assets.PACKAGE_DIR / spec.filename
        assert assets.sha256_of(shipped) == spec.sha256 == assets.sha256_of(params_dir / spec.filename)
        lic = assets.PACKAGE_DIR / spec.license_file
        assert lic.read_bytes() == (params_dir / spec.license_file).read_bytes()
        assert {"MIT": "MIT License", "Apache-2.0": "Apache License"}[spec.license] in lic.read_text()


def test_shipped_files_are_package_data_and_listed_in_notice():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"tools/params/*.npz"' in pyproject and '"tools/params/LICENSE-*"' in pyproject
    notice = (REPO / "NOTICE").read_text()
    for spec in assets.ASSETS.values():
        assert spec.filename in notice and spec.sha256 in notice and spec.license_file in notice
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    assert not hasattr(assets, "download") and not hasattr(assets, "ASSET_BASE_URL")  # nothing is fetched


def test_default_is_the_shipped_file():
    asset = assets.load_asset("niqe_pris_params.npz")
    assert asset.path == assets.PACKAGE_DIR / "niqe_pris_params.npz"
    assert asset.official and asset.source == "official" and asset.where == "lmmiqa (shipped)"
    arrays = asset.arrays
    assert arrays["cov_pris_param"].shape == (36, 36) and arrays["cov_pris_param"].dtype == np.float64
    with pytest.raises(ValueError):
        arrays["mu_pris_param"][0, 0] = 1.0  # shared read-only arrays


def _own_niqe(folder: pathlib.Path, scale: float = 1.5) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(assets.PACKAGE_DIR / "niqe_pris_params.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["cov_pris_param"] = arrays["cov_pris_param"] * scale
    np.savez(folder / "niqe_pris_params.npz", **arrays)
    return folder


def test_user_folder_overrides_file_by_file(tmp_path, make_rgb, monkeypatch):
    own = _own_niqe(tmp_path / "own")
    img = make_rgb(0, 200, 300)
    official = get_tool("niqe").measure(img)
    mine = get_tool("niqe", assets=str(own)).measure(img)
    assert mine[0] != pytest.approx(official[0], rel=1e-3)
    assert official[1]["params"] == "official"
    assert mine[1]["params"] == f"user:{own / 'niqe_pris_params.npz'}"
    # the folder has no BRISQUE files: BRISQUE falls through to the shipped ones
    assert get_tool("brisque", assets=str(own)).measure(img)[1]["params"] == "official"
    monkeypatch.setenv("LMMIQA_ASSETS", str(own))
    assert get_tool("niqe").measure(img)[0] == pytest.approx(mine[0], rel=1e-12)
    other = _own_niqe(tmp_path / "other", 2.0)  # the option comes before the environment
    assert assets.locate("niqe_pris_params.npz", other) == other / "niqe_pris_params.npz"


def test_missing_user_folder_is_an_error_not_a_silent_fallback(tmp_path, monkeypatch):
    with pytest.raises(assets.AssetError, match="does not exist"):
        assets.locate("brisque_svm.npz", tmp_path / "nope")
    r = get_tool("niqe", assets=str(tmp_path / "nope")).run(np.zeros((200, 200, 3), dtype=np.uint8))
    assert r.error is not None and "nope" in r.error
    monkeypatch.setenv("LMMIQA_ASSETS", str(tmp_path / "typo"))
    with pytest.raises(assets.AssetError, match="LMMIQA_ASSETS"):
        assets.locate("brisque_svm.npz")


def test_missing_shipped_file_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "PACKAGE_DIR", tmp_path / "empty")
    with pytest.raises(assets.AssetError) as info:
        assets.locate("niqe_pris_params.npz")
    msg = str(info.value)
    assert "niqe_pris_params.npz" in msg and "reinstall" in msg and "--assets" in msg and "LMMIQA_ASSETS" in msg
    rows = {r["file"]: r for r in assets.describe_assets()}
    assert rows["niqe_pris_params.npz"]["found"] is None
    assert "reinstall" in rows["niqe_pris_params.npz"]["fix"]


def test_wrong_file_content_is_refused(tmp_path, monkeypatch):
    np.savez(tmp_path / "niqe_pris_params.npz", mu_pris_param=np.zeros((1, 36)))
    monkeypatch.setenv("LMMIQA_ASSETS", str(tmp_path))
    with pytest.raises(assets.AssetError, match="'cov_pris_param' missing"):
        assets.load_arrays("niqe_pris_params.npz")
    np.savez(tmp_path / "niqe_pris_params.npz", mu_pris_param=np.zeros((1, 18)), cov_pris_param=np.eye(36),
             gaussian_window=np.ones((7, 7)))
    with pytest.raises(assets.AssetError, match="shape"):
        assets.load_arrays("niqe_pris_params.npz")


def test_describe_assets():
    rows = assets.describe_assets()
    assert {r["file"] for r in rows} == set(assets.ASSETS)
    assert all(r["found"] and r["official"] and r["where"] == "lmmiqa (shipped)" for r in rows)
    assert all(pathlib.Path(r["license_file"]).is_file() for r in rows)


def test_score_niqe_works_on_a_fresh_offline_machine(tmp_path, images_dir):
    """`lmmiqa score photo --method niqe` with a fresh HOME, no caches, no $LMMIQA_ASSETS, no network proxy."""
    home = tmp_path / "home"
    home.mkdir()
    photo = tmp_path / "photo.png"
    shutil.copy(images_dir / "rated" / "baboon.png", photo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMMIQA_", "XDG_"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO / "src"), http_proxy="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    out = subprocess.run(
        [sys.executable, "-m", "lmmiqa.cli", "score", str(photo), "--method", "niqe", "--format", "jsonl"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["error"] is None and row["score"] == pytest.approx(5.72957, rel=0.004)  # rgb2gray default: +0.35 %
    assert row["details"]["params"] == "official" and row["details"]["channel"] == "gray"
    assert not (home / ".cache" / "lmmiqa" / "assets").exists()  # nothing was fetched or cached
