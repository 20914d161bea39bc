"""Parameter files: lookup order, pinned sha256, verified download, the offline error message."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lmmiqa.tools import assets, get_tool


def test_pinned_hashes_are_those_of_the_official_files(params_dir):
    for spec in assets.ASSETS.values():
        assert assets.sha256_of(params_dir / spec.filename) == spec.sha256, spec.filename
        assert spec.url.endswith("/" + spec.filename) and spec.url.startswith("https://")


def test_env_folder_is_used(params_dir):
    path = assets.locate("niqe_pris_params.npz")
    assert path == params_dir / "niqe_pris_params.npz"
    arrays = assets.load_arrays("niqe_pris_params.npz")
    assert arrays["cov_pris_param"].shape == (36, 36) and arrays["cov_pris_param"].dtype == np.float64
    with pytest.raises(ValueError):
        arrays["mu_pris_param"][0, 0] = 1.0  # shared read-only arrays


def test_option_folder_comes_first(params_dir, tmp_path, monkeypatch, images_dir):
    monkeypatch.delenv("LMMIQA_ASSETS")
    own = tmp_path / "own"
    own.mkdir()
    for f in ("brisque_svm.npz", "brisque_ggd_tables.npz"):
        shutil.copy(params_dir / f, own / f)
    assert assets.locate("brisque_svm.npz", own) == own / "brisque_svm.npz"
    value = get_tool("brisque", assets=str(own)).compute(images_dir / "rated" / "I01.BMP")
    assert value == pytest.approx(10.2594, abs=1e-4)


def test_user_cache_is_searched(params_dir, isolated_cache, monkeypatch):
    monkeypatch.delenv("LMMIQA_ASSETS")
    cache = isolated_cache / "assets"
    cache.mkdir(parents=True)
    shutil.copy(params_dir / "niqe_pris_params.npz", cache)
    assert assets.assets_cache_dir() == cache
    assert assets.locate("niqe_pris_params.npz") == cache / "niqe_pris_params.npz"


def test_offline_error_says_which_file_to_put_where(isolated_cache):
    with pytest.raises(assets.AssetError) as info:
        assets.locate("niqe_pris_params.npz")
    msg = str(info.value)
    assert "niqe_pris_params.npz" in msg
    assert str(isolated_cache / "assets" / "niqe_pris_params.npz") in msg
    assert "LMMIQA_ASSETS" in msg and assets.ASSETS["niqe_pris_params.npz"].sha256 in msg
    assert "LMMIQA_OFFLINE" in msg
    r = get_tool("niqe").run(np.zeros((200, 200, 3), dtype=np.uint8))
    assert r.error is not None and "niqe_pris_params.npz" in r.error


def test_missing_option_folder_is_named(tmp_path):
    with pytest.raises(assets.AssetError, match="does not exist"):
        assets.locate("brisque_svm.npz", tmp_path / "nope")


def test_download_verifies_the_sha256(params_dir, isolated_cache, monkeypatch):
    monkeypatch.delenv("LMMIQA_ASSETS")
    monkeypatch.delenv("LMMIQA_OFFLINE")
    monkeypatch.setattr(assets, "ASSET_BASE_URL", params_dir.as_uri() + "/")
    path = assets.locate("brisque_svm.npz")
    assert path == isolated_cache / "assets" / "brisque_svm.npz"
    assert assets.sha256_of(path) == assets.ASSETS["brisque_svm.npz"].sha256
    assert not list(path.parent.glob("*.part"))


def test_download_with_a_wrong_hash_is_discarded(params_dir, isolated_cache, tmp_path, monkeypatch):
    monkeypatch.delenv("LMMIQA_ASSETS")
    monkeypatch.delenv("LMMIQA_OFFLINE")
    fake = tmp_path / "server"
    fake.mkdir()
    (fake / "niqe_pris_params.npz").write_bytes(b"tampered")
    monkeypatch.setattr(assets, "ASSET_BASE_URL", fake.as_uri() + "/")
    with pytest.raises(assets.AssetError, match="expected 2a7c"):
        assets.locate("niqe_pris_params.npz")
    cache = isolated_cache / "assets"
    assert not (cache / "niqe_pris_params.npz").exists() and not list(cache.glob("*.part"))


def test_unreachable_download_explains_the_fix(isolated_cache, monkeypatch):
    monkeypatch.delenv("LMMIQA_OFFLINE")
    monkeypatch.setattr(assets, "ASSET_BASE_URL", "http://127.0.0.1:9/nothing/")
    with pytest.raises(assets.AssetError) as info:
        assets.locate("brisque_ggd_tables.npz")
    msg = str(info.value)
    assert "download failed" in msg and str(isolated_cache / "assets" / "brisque_ggd_tables.npz") in msg
    calls = []
    monkeypatch.setattr(assets, "download", lambda *a, **k: calls.append(a))
    with pytest.raises(assets.AssetError, match="not retried yet"):
        assets.locate("brisque_ggd_tables.npz")  # an agent calling the tool again does not wait again
    assert calls == []


def test_wrong_file_content_is_refused(tmp_path, monkeypatch):
    np.savez(tmp_path / "niqe_pris_params.npz", mu_pris_param=np.zeros((1, 36)))
    monkeypatch.setenv("LMMIQA_ASSETS", str(tmp_path))
    with pytest.raises(assets.AssetError, match="'cov_pris_param' missing"):
        assets.load_arrays("niqe_pris_params.npz")
    np.savez(tmp_path / "niqe_pris_params.npz", mu_pris_param=np.zeros((1, 18)), cov_pris_param=np.eye(36),
             gaussian_window=np.ones((7, 7)))
    with pytest.raises(assets.AssetError, match="shape"):
        assets.load_arrays("niqe_pris_params.npz")


def test_describe_assets(params_dir):
    rows = assets.describe_assets()
    assert {r["file"] for r in rows} == set(assets.ASSETS)
    assert all(r["found"] and r["official"] for r in rows)
