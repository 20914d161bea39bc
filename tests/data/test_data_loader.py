"""Dataset records, the label loader, splits and the shared --dataset/--labels flags."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmmiqa import registry
from lmmiqa.cli._data_args import add_data_args, dataset_from_args
from lmmiqa.data import Dataset, DatasetRecord, get_record, load_dataset, parse_split
from lmmiqa.errors import ConfigError, DataError, UnknownNameError


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def tiny_root(tmp_path: Path) -> Path:
    """A root folder with 12 images in the collection format (4 references x 3 distortions)."""
    (tmp_path / "Set" / "img").mkdir(parents=True)
    rows = ["dis_img_path,dis_type,ref_img_path,score"]
    for r in range(4):
        for d in range(3):
            rel = f"Set/img/r{r}_d{d}.png"
            (tmp_path / rel).write_bytes(b"x")
            rows.append(f"{rel},blur,Set/ref/r{r}.png,{5 - d - r * 0.1:.2f}")
    write_csv(tmp_path / "labels.csv", "\n".join(rows) + "\n")
    return tmp_path


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", registry.names("dataset"))
def test_every_registered_dataset_resolves_to_a_record(name):
    rec = get_record(name)
    assert isinstance(rec, DatasetRecord) and rec.name == name
    assert rec.formats and rec.label_file
    assert rec.split in ("official", "random", "by_reference")
    assert rec.split == "by_reference" if rec.full_reference else rec.split in ("official", "random")


def test_directions_and_aliases():
    assert not get_record("csiq").higher_is_better and not get_record("live").higher_is_better
    assert get_record("koniq").name == "koniq10k" and get_record("KADID-10k").name == "kadid10k"
    assert get_record("live-challenge").name == "livec"
    with pytest.raises(UnknownNameError, match="did you mean 'koniq10k'.*known: agiqa1k"):
        get_record("koniq10")


# --------------------------------------------------------------------------- real label files


LABELS = {
    "koniq10k": ("KonIQ-10k.csv", 10073, True),
    "spaq": ("SPAQ.csv", 11125, True),
    "livec": ("LIVE_Challenge.csv", 1161, True),
    "kadid10k": ("KADID-10k.csv", 10125, True),
    "agiqa3k": ("AGIQA-3k.csv", 2982, True),
    "agiqa1k": ("AGIQA-1k.csv", 1080, True),
    "csiq": ("CSIQ.csv", 866, False),
    "tid2013": ("TID2013.csv", 3000, True),
    "live": ("LIVE.csv", 779, False),
}


@pytest.mark.parametrize("name", sorted(LABELS))
def test_real_label_files_load(shared_dir, name):
    fname, n, hib = LABELS[name]
    ds = load_dataset(name, labels=shared_dir / "data" / "labels" / fname, check_files=False)
    assert len(ds) == n and ds.higher_is_better is hib
    assert np.isfinite(ds.scores()).all()
    lo, hi = ds.score_range
    assert lo - 3 <= ds.scores().min() and ds.scores().max() <= hi + 12  # LIVE DMOS is realigned past 0-100
    assert ds.full_reference == get_record(name).full_reference


def test_koniq_official_split_from_both_formats(shared_dir, tmp_path):
    labels = shared_dir / "data" / "labels"
    sizes = {}
    full_a = load_dataset("koniq10k", labels=labels / "KonIQ-10k.csv", check_files=False)
    full_b = load_dataset("koniq10k", labels=labels / "KonIQ-10k-official-sets.csv", check_files=False)
    for part in ("train", "val", "test"):
        a, b = full_a.select(f"official:{part}"), full_b.select(f"official:{part}")
        assert len(a) == len(b)
        assert [Path(i).name for i in a.ids()] == b.ids()
        sizes[part] = len(a)
    assert sizes == {"train": 7058, "val": 1000, "test": 2015}
    assert load_dataset("koniq10k", labels=labels / "KonIQ-10k.csv", split="official", check_files=False).split \
        == "official:test"
    # the collection file alone cannot give the official split: clear message
    shutil.copy(labels / "KonIQ-10k.csv", tmp_path / "KonIQ-10k.csv")
    with pytest.raises(DataError, match="KonIQ-10k-official-sets.csv; looked in"):
        load_dataset("koniq10k", root=tmp_path, split="official", check_files=False)
    # ... unless the official file is in --root
    shutil.copy(labels / "KonIQ-10k-official-sets.csv", tmp_path / "KonIQ-10k-official-sets.csv")
    assert len(load_dataset("koniq10k", root=tmp_path, split="official", check_files=False)) == 2015


def test_kadid_splits_by_reference(shared_dir):
    path = shared_dir / "data" / "labels" / "KADID-10k.csv"
    test = load_dataset("kadid10k", labels=path, split="seed:0", check_files=False)
    train = load_dataset("kadid10k", labels=path, split="seed:0:train", check_files=False)
    assert len(test) + len(train) == 10125
    assert not set(test.groups()) & set(train.groups())
    assert len(set(test.groups())) == 16 and len(set(train.groups())) == 65  # 81 references, 20 % -> 16
    again = load_dataset("kadid10k", labels=path, split="seed:0", check_files=False)
    other = load_dataset("kadid10k", labels=path, split="seed:1", check_files=False)
    assert again.ids() == test.ids() and set(other.groups()) != set(test.groups())


def test_authentic_seed_split_is_by_image(shared_dir):
    ds = load_dataset("livec", labels=shared_dir / "data" / "labels" / "LIVE_Challenge.csv", check_files=False)
    test, train = ds.select("seed:2"), ds.select("seed:2:train")
    assert len(test) == round(0.2 * 1161) and len(test) + len(train) == 1161
    with pytest.raises(ConfigError, match="no official split"):
        ds.select("official")


# --------------------------------------------------------------------------- generic CSV and edge cases


def test_generic_csv_with_custom_columns(tmp_path):
    write_csv(tmp_path / "my.csv", "file,quality,src\na.png,10,r1\nb.png,30,r1\nc.png,20,r2\n")
    ds = load_dataset(labels=tmp_path / "my.csv", root=tmp_path, image_column="file", score_column="quality",
                      ref_column="src", lower_better=True, score_range=(0, 100), check_files=False)
    assert ds.name == "csv" and not ds.higher_is_better and ds.score_range == (0.0, 100.0)
    assert ds.groups() == ["r1", "r1", "r2"] and ds.record.split == "by_reference"
    assert ds.items[0].path == str(tmp_path.resolve() / "a.png")
    with pytest.raises(ConfigError, match="column 'score' not in"):
        load_dataset(labels=tmp_path / "my.csv", image_column="file", check_files=False)


def test_bom_and_crlf(tmp_path):
    (tmp_path / "x.csv").write_bytes("\ufeffImage,Score\r\na.jpg,1.5\r\nb.jpg,2.5\r\n".encode())
    ds = load_dataset("agiqa1k", labels=tmp_path / "x.csv", check_files=False)
    assert ds.ids() == ["a.jpg", "b.jpg"] and ds.scores().tolist() == [1.5, 2.5]


@pytest.mark.parametrize("bad", ["../escape.png", "/etc/passwd", "a/../../b.png", "C:\\x.png", "a\\..\\..\\b.png"])
def test_paths_may_not_escape_root(tmp_path, bad):
    write_csv(tmp_path / "l.csv", f"dis_img_path,score\nok.png,1\n{bad},2\n")
    with pytest.raises(DataError, match="not allowed"):
        load_dataset(labels=tmp_path / "l.csv", root=tmp_path, check_files=False)


def test_malformed_rows_are_reported_with_line_numbers(tmp_path):
    write_csv(tmp_path / "l.csv", "dis_img_path,score\na.png,1\na.png,2\n")
    with pytest.raises(DataError, match=r"l.csv:3: duplicate image 'a.png' \(first on line 2\)"):
        load_dataset(labels=tmp_path / "l.csv", check_files=False)
    write_csv(tmp_path / "l.csv", "dis_img_path,score\na.png,high\n")
    with pytest.raises(DataError, match=r"l.csv:2: score column 'score' has non-numeric value 'high'"):
        load_dataset(labels=tmp_path / "l.csv", check_files=False)
    write_csv(tmp_path / "l.csv", "dis_img_path,score\n")
    with pytest.raises(DataError, match="no rows"):
        load_dataset(labels=tmp_path / "l.csv", check_files=False)
    with pytest.raises(DataError, match="label file not found"):
        load_dataset(labels=tmp_path / "nope.csv", check_files=False)
    write_csv(tmp_path / "l.csv", "name,mos\na.png,1\n")
    with pytest.raises(ConfigError, match="does not look like a KADID-10k label file: columns name, mos"):
        load_dataset("kadid10k", labels=tmp_path / "l.csv", check_files=False)


def test_missing_files_are_reported_then_skipped(tiny_root):
    for rel in ("Set/img/r0_d0.png", "Set/img/r2_d1.png"):
        (tiny_root / rel).unlink()
    with pytest.raises(DataError, match=r"2 of 12 image file\(s\) of csv are missing .*r0_d0.png.*--skip-missing"):
        load_dataset(labels=tiny_root / "labels.csv", root=tiny_root)
    ds = load_dataset(labels=tiny_root / "labels.csv", root=tiny_root, skip_missing=True)
    assert len(ds) == 10 and ds.n_missing == 2 and ds.summary()["n_missing"] == 2
    assert any("r0_d0.png" in m for m in ds.missing_examples)
    with pytest.raises(DataError, match="none exists"):
        load_dataset(labels=tiny_root / "labels.csv", root=tiny_root / "Set", skip_missing=True)


def test_split_spec_parsing():
    assert str(parse_split(None)) == "all" and str(parse_split("official")) == "official:test"
    assert str(parse_split("seed:3")) == "seed:3:test" and str(parse_split("SEED:3:train")) == "seed:3:train"
    assert str(parse_split("test")) == "official:test" and str(parse_split("Train")) == "official:train"
    for bad in ("seed", "seed:-1", "seed:1:val", "official:dev", "random", "seed:a"):
        with pytest.raises(ConfigError, match="valid: all"):
            parse_split(bad)


def test_dataset_helpers(tiny_root):
    ds = load_dataset(labels=tiny_root / "labels.csv", root=tiny_root, ref_column="ref_img_path")
    assert isinstance(ds, Dataset) and len(ds.head(5)) == 5
    it = ds.items[4]
    assert ds.item_for_path(it.path) == it and ds.item_for_path("nope") is None
    assert ds.select("seed:0").split == "seed:0:test"


# --------------------------------------------------------------------------- the shared flags


def parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_data_args(p, **kw)
    return p


def test_data_args(tiny_root):
    args = parser().parse_args(["--labels", str(tiny_root / "labels.csv"), "--root", str(tiny_root),
                                "--ref-column", "ref_img_path", "--split", "seed:0:train"])
    ds = dataset_from_args(args)
    assert ds.split == "seed:0:train" and len(set(ds.groups())) == 3
    with pytest.raises(ConfigError, match="--dataset NAME --root DIR, or --labels CSV"):
        dataset_from_args(parser().parse_args([]))
    assert dataset_from_args(parser(required=False).parse_args([])) is None
    with pytest.raises(ConfigError, match="needs --root DIR"):
        dataset_from_args(parser().parse_args(["--dataset", "spaq"]))
    # images=False: no --skip-missing flag, no file check, no --root needed
    p = parser(images=False)
    assert not any(a.dest == "skip_missing" for a in p._actions)
    ds = dataset_from_args(p.parse_args(["--labels", str(tiny_root / "labels.csv"), "--lower-better"]))
    assert not ds.higher_is_better and ds.root is None


def test_named_dataset_reads_its_label_file_from_root(shared_dir):
    ds = dataset_from_args(parser(images=False).parse_args(["--dataset", "csiq", "--root",
                                                            str(shared_dir / "data" / "labels")]))
    assert len(ds) == 866 and ds.labels.endswith("CSIQ.csv")
