"""Reference banks: build from a label CSV, round trip, resumption, corruption errors, approximate indexes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmmiqa.data import load_dataset
from lmmiqa.errors import DataError
from lmmiqa.retrieval.bank import (
    BANK_JSON,
    EMBEDDINGS_NPY,
    INDEX_FAISS,
    ITEMS_CSV,
    PARTIAL_DIR,
    Bank,
    BankSource,
    build_bank,
    build_index,
    content_hash,
)
from lmmiqa.retrieval.testing import PixelEncoder
from lmmiqa.testing import make_image

pytest.importorskip("faiss")

N = 12


def write_collection(root: Path, n: int = N, *, scores: list[float] | None = None) -> Path:
    """n generated images under root/imgs and a collection-format label CSV (dis_img_path, score)."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    scores = scores if scores is not None else [1.0 + 4.0 * i / (n - 1) for i in range(n)]
    labels = root / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dis_img_path", "score"])
        for i, s in enumerate(scores):
            rel = f"imgs/{i:03d}.png"
            make_image(24 + i, 20, seed=i).save(root / rel)
            w.writerow([rel, s])
    return labels


@pytest.fixture()
def labelled(tmp_path):
    labels = write_collection(tmp_path / "data")
    return load_dataset(labels=labels, root=tmp_path / "data")


def test_build_and_load_round_trip(tmp_path, labelled):
    enc = PixelEncoder(grid=2)
    bank = build_bank(tmp_path / "bank", labelled, enc, chunk_size=5)
    for name in (BANK_JSON, ITEMS_CSV, EMBEDDINGS_NPY, INDEX_FAISS):
        assert (tmp_path / "bank" / name).is_file()
    assert not (tmp_path / "bank" / PARTIAL_DIR).exists()
    meta = json.loads((tmp_path / "bank" / BANK_JSON).read_text())
    assert meta["schema"] == "lmmiqa.bank" and meta["schema_version"] == 1
    assert meta["encoder"] == {"spec": "dinov2:test-pixels-2", "kind": "dinov2", "model": "test-pixels-2",
                              "pooling": "cls"}
    assert (meta["count"], meta["dim"]) == (N, 12)
    assert meta["mos"]["min"] == 1.0 and meta["mos"]["max"] == 5.0 and meta["mos"]["higher_is_better"]
    assert meta["created_with"]["lmmiqa"]
    assert meta["index"] == {"kind": "flat", "params": {}}

    loaded = Bank.load(tmp_path / "bank")
    assert loaded.items == bank.items and loaded.meta == bank.meta
    assert [it.id for it in loaded.items] == labelled.ids()
    assert [it.path for it in loaded.items] == labelled.paths()
    np.testing.assert_allclose([it.mos_norm for it in loaded.items], np.linspace(0, 1, N), atol=1e-12)
    assert [it.bin for it in loaded.items] == [1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5]
    emb = loaded.embeddings()
    assert emb.dtype == np.float32 and emb.shape == (N, 12)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    raw = PixelEncoder(grid=2).embed([make_image(24 + 3, 20, seed=3)])
    dist, idx = loaded.search(raw, 3)
    assert idx[0, 0] == 3 and dist[0, 0] < 1e-3 and dist.shape == (1, 3)
    assert loaded.row_of_hash(content_hash(make_image(24 + 3, 20, seed=3))) == 3
    assert loaded.row_of_path(labelled.paths()[5]) == 5
    assert loaded.overlap([*labelled.paths()[:4], "/elsewhere/x.png"]) == 4
    s = loaded.summary()
    assert s["count"] == N and sum(s["bins"].values()) == N and s["fingerprint"] == loaded.fingerprint


def test_lower_is_better_scores_are_flipped(tmp_path):
    labels = write_collection(tmp_path / "data", scores=[float(10 * i) for i in range(N)])
    ds = load_dataset(labels=labels, root=tmp_path / "data", lower_better=True)
    bank = build_bank(tmp_path / "bank", ds, PixelEncoder())
    assert bank.meta["mos"]["flipped"] and not bank.meta["mos"]["higher_is_better"]
    assert bank.items[0].mos == 0.0 and bank.items[0].mos_norm == 1.0 and bank.items[0].bin == 5
    assert bank.items[-1].mos_norm == 0.0 and bank.items[-1].bin == 1


def test_rebased_root(tmp_path, labelled):
    build_bank(tmp_path / "bank", labelled, PixelEncoder())
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "data", moved)
    bank = Bank.load(tmp_path / "bank", root=moved)
    assert bank.items[0].path == str(moved / "imgs" / "000.png")


def test_resume_after_a_crash_embeds_only_the_rest(tmp_path, labelled):
    out = tmp_path / "bank"
    with pytest.raises(RuntimeError, match="simulated"):
        build_bank(out, labelled, PixelEncoder(batch_size=4, fail_after=2), chunk_size=4)  # chunks 0, 1 done
    assert not (out / BANK_JSON).exists()
    assert sorted(p.name for p in (out / PARTIAL_DIR).glob("chunk_*.npz")) == ["chunk_000000.npz", "chunk_000001.npz"]
    with pytest.raises(DataError, match="resume"):
        Bank.load(out)
    again = PixelEncoder(batch_size=4)
    bank = build_bank(out, labelled, again, chunk_size=4)
    assert again.images_seen == 4  # only the last chunk
    fresh = build_bank(tmp_path / "fresh", labelled, PixelEncoder(), chunk_size=4)
    np.testing.assert_array_equal(bank.embeddings(), fresh.embeddings())
    assert [it.mos_norm for it in bank.items] == [it.mos_norm for it in fresh.items]


def test_unfinished_build_of_other_settings_and_existing_bank_need_force(tmp_path, labelled):
    out = tmp_path / "bank"
    with pytest.raises(RuntimeError):
        build_bank(out, labelled, PixelEncoder(fail_after=1), chunk_size=4)
    with pytest.raises(DataError, match="unfinished bank build of different encoder"):
        build_bank(out, labelled, PixelEncoder(grid=3), chunk_size=4)
    build_bank(out, labelled, PixelEncoder(grid=3), chunk_size=4, force=True)
    with pytest.raises(DataError, match="already holds a bank"):
        build_bank(out, labelled, PixelEncoder(), chunk_size=4)
    assert build_bank(out, labelled, PixelEncoder(), force=True).dim == 12


def test_bad_images_stop_the_build_or_are_skipped(tmp_path, labelled):
    Path(labelled.paths()[2]).write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"1 image\(s\) of the bank cannot be opened.*002.png"):
        build_bank(tmp_path / "bank", labelled, PixelEncoder(), chunk_size=4)
    bank = build_bank(tmp_path / "bank", labelled, PixelEncoder(), chunk_size=4, skip_bad=True)
    assert bank.count == N - 1 and bank.meta["n_skipped"] == 1
    assert labelled.paths()[2] not in [it.path for it in bank.items]


def test_constant_scores_cannot_be_binned(tmp_path):
    labels = write_collection(tmp_path / "data", scores=[3.0] * N)
    ds = load_dataset(labels=labels, root=tmp_path / "data")
    with pytest.raises(DataError, match="spread"):
        build_bank(tmp_path / "bank", ds, PixelEncoder())


# --------------------------------------------------------------------------- corruption


@pytest.fixture()
def bank_dir(tmp_path, labelled):
    build_bank(tmp_path / "bank", labelled, PixelEncoder())
    return tmp_path / "bank"


@pytest.mark.parametrize("name", [ITEMS_CSV, EMBEDDINGS_NPY, INDEX_FAISS])
def test_missing_file(bank_dir, name):
    (bank_dir / name).unlink()
    with pytest.raises(DataError, match=f"incomplete: missing {name}"):
        Bank.load(bank_dir)


def test_not_a_bank(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Bank.load(tmp_path / "nope")
    with pytest.raises(DataError, match="bank.json is missing"):
        Bank.load(tmp_path)


def test_dimension_mismatch(bank_dir):
    np.save(bank_dir / EMBEDDINGS_NPY, np.zeros((N, 13), dtype=np.float32))
    with pytest.raises(DataError, match=r"shape \(12, 13\).*dim = 12"):
        Bank.load(bank_dir)
    np.save(bank_dir / EMBEDDINGS_NPY, np.zeros((N, 12), dtype=np.float64))
    with pytest.raises(DataError, match="float32"):
        Bank.load(bank_dir)


def test_index_disagrees_with_bank_json(bank_dir):
    index, _ = build_index(np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32))
    import faiss

    faiss.write_index(index, str(bank_dir / INDEX_FAISS))
    with pytest.raises(DataError, match="index.faiss holds 5 vectors"):
        Bank.load(bank_dir)


def _edit_meta(bank_dir: Path, **changes) -> None:
    meta = json.loads((bank_dir / BANK_JSON).read_text())
    meta.update(changes)
    (bank_dir / BANK_JSON).write_text(json.dumps(meta))


def test_wrong_schema_and_newer_version(bank_dir):
    _edit_meta(bank_dir, schema="something.else")
    with pytest.raises(DataError, match="not an lmmiqa reference bank"):
        Bank.load(bank_dir)
    _edit_meta(bank_dir, schema="lmmiqa.bank", schema_version=99)
    with pytest.raises(DataError, match="newer lmmiqa"):
        Bank.load(bank_dir)
    _edit_meta(bank_dir, schema_version=1, encoder={"kind": "resnet", "model": "x"})
    with pytest.raises(DataError, match="unknown encoder 'resnet'"):
        Bank.load(bank_dir)
    (bank_dir / BANK_JSON).write_text("{ not json")
    with pytest.raises(DataError, match="not valid JSON"):
        Bank.load(bank_dir)


def test_count_mismatch_and_bad_rows(bank_dir):
    _edit_meta(bank_dir, count=N + 1)
    with pytest.raises(DataError, match="13"):
        Bank.load(bank_dir)
    _edit_meta(bank_dir, count=N)
    text = (bank_dir / ITEMS_CSV).read_text().splitlines()
    fields = text[1].split(",")
    fields[3] = "1.7"  # mos_norm out of [0, 1]
    (bank_dir / ITEMS_CSV).write_text("\n".join([text[0], ",".join(fields), *text[2:]]) + "\n")
    with pytest.raises(DataError, match="out of range"):
        Bank.load(bank_dir)


# --------------------------------------------------------------------------- approximate indexes


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_finds_exact_vectors(kind):
    x = np.random.default_rng(1).normal(size=(400, 16)).astype(np.float32)
    index, meta = build_index(x, kind, {"nprobe": 8} if kind == "ivf" else None)
    assert meta["kind"] == kind
    _, ix = index.search(x[:50], 1)
    assert (ix[:, 0] == np.arange(50)).mean() >= 0.95


def test_bank_with_hnsw_index_round_trips(tmp_path, labelled):
    bank = build_bank(tmp_path / "bank", labelled, PixelEncoder(), index="hnsw")
    assert bank.meta["index"]["kind"] == "hnsw" and bank.meta["index"]["params"]["M"] == 32
    loaded = Bank.load(tmp_path / "bank")
    assert loaded.index.hnsw.efSearch == loaded.meta["index"]["params"]["ef_search"]
    _, idx = loaded.search(loaded.embeddings()[:3], 1)
    assert idx[:, 0].tolist() == [0, 1, 2]
    with pytest.raises(Exception, match="flat, hnsw, ivf, auto"):
        build_bank(tmp_path / "b2", labelled, PixelEncoder(), index="lsh")


def test_bank_source_needs_aligned_non_empty_columns():
    with pytest.raises(Exception, match="same length"):
        BankSource(ids=("a",), paths=("a", "b"), scores=(1.0,))
    with pytest.raises(DataError):
        BankSource(ids=(), paths=(), scores=())
