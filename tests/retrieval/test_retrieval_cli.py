"""``lmmiqa bank build/info``, ``lmmiqa score --method iqarag`` and the ``lmmiqa eval`` leakage guard."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

import lmmiqa
from lmmiqa.cli import main
from lmmiqa.testing import make_image

pytest.importorskip("faiss")
pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture()
def data(tmp_path):
    """10 images with a label CSV (dis_img_path, score); the first 6 are the bank, the rest queries."""
    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    bank_csv, query_csv = root / "bank.csv", root / "queries.csv"
    for path, rows in ((bank_csv, range(6)), (query_csv, range(6, 10))):
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["dis_img_path", "score"])
            for i in rows:
                make_image(36, 28, seed=i).save(root / f"imgs/{i}.png")
                w.writerow([f"imgs/{i}.png", 1 + (i % 5)])
    return root, bank_csv, query_csv


def test_bank_build_info_score_and_eval(tmp_path, data, tiny_encoder_path, tiny_model_path, capsys):
    root, bank_csv, query_csv = data
    clip = tiny_encoder_path("clip")
    model = str(tiny_model_path("qwen2_5_vl"))
    bank = tmp_path / "bank"
    build = ["bank", "build", "--labels", str(bank_csv), "--root", str(root), "--encoder", f"clip:{clip}",
             "--out", str(bank), "--device", "cpu", "--no-progress"]
    assert main(build) == 0
    out = capsys.readouterr().out
    assert f"clip:{clip}" in out and "items     6  dim=24" in out

    assert main(["bank", "info", str(bank)]) == 0
    assert "bins      1:2  2:1  3:1  4:1  5:1" in capsys.readouterr().out
    assert main(["bank", "info", str(bank), "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 6 and info["encoder"] == f"clip:{clip}" and info["index"]["kind"] == "flat"

    assert main(build) == 1
    assert "already holds a bank" in capsys.readouterr().err

    query = str(root / "imgs/7.png")
    assert main(["score", query, "--method", "iqarag", "--bank", str(bank), "--model", model, "--device", "cpu",
                 "--top-k", "4", "--format", "json"]) == 0
    (res,) = json.loads(capsys.readouterr().out)
    assert res["error"] is None and 1 <= res["score"] <= 5
    assert res["details"]["top_k"] == 4 and 1 <= res["details"]["n_references"] <= 4

    method = ["eval", "--method", "iqarag", "--bank", str(bank), "--model", model, "--device", "cpu",
              "--root", str(root), "--n-boot", "0", "--no-plot"]
    overlapping = [*method, "--labels", str(bank_csv), "--limit", "2"]
    assert main([*overlapping, "--out", str(tmp_path / "run1")]) == 2
    assert "2 of the 2 image(s) to evaluate are also in the method's reference data" in capsys.readouterr().err
    assert main([*overlapping, "--out", str(tmp_path / "run2"), "--allow-overlap"]) == 0
    assert main([*method, "--labels", str(query_csv), "--out", str(tmp_path / "run3")]) == 0
    report = json.loads((tmp_path / "run3" / "report.json").read_text())
    assert report["n"] == 4 and report["method"] == "iqarag"


def test_usage_errors(tmp_path, data, capsys):
    root, bank_csv, _ = data
    assert main(["bank"]) == 2
    assert main(["bank", "build", "--labels", str(bank_csv), "--root", str(root), "--encoder", "vision-tower",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["bank", "build", "--labels", str(bank_csv), "--root", str(root), "--encoder", "resnet:x",
                 "--out", str(tmp_path / "b")]) == 2
    assert "known: clip, dinov2, siglip, vision-tower" in capsys.readouterr().err
    assert main(["bank", "info", str(tmp_path)]) == 1
    assert "not a reference bank" in capsys.readouterr().err


def test_encoder_model_override_loads_the_same_encoder_from_elsewhere(tmp_path, data, tiny_encoder_path):
    import numpy as np

    from lmmiqa.data import load_dataset
    from lmmiqa.methods.iqarag import IQARAG, IQARAGConfig
    from lmmiqa.retrieval import build_bank, create_encoder

    root, bank_csv, _ = data
    clip = tiny_encoder_path("clip")
    original = create_encoder(f"clip:{clip}", device="cpu")
    build_bank(tmp_path / "bank", load_dataset(labels=bank_csv, root=root), original)
    copy = tmp_path / "clip-copy"
    shutil.copytree(clip, copy)
    scorer = IQARAG(IQARAGConfig(bank=str(tmp_path / "bank"), model="unused", device="cpu", encoder_model=str(copy)))
    assert scorer.encoder.spec.kind == "clip" and scorer.encoder.spec.model == str(copy)
    img = make_image(30, 30, seed=9)
    np.testing.assert_allclose(scorer.encoder.embed([img]), original.embed([img]), atol=1e-6)
    assert lmmiqa.list_methods()["iqarag"].startswith("IQARAG")
