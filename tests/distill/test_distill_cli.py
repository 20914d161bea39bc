"""``lmmiqa distill teach|train|calibrate|info`` and ``lmmiqa score --method leaf`` end to end, in process."""

from __future__ import annotations

import json

import pytest
from test_leaf_scorer import labels_csv

from lmmiqa.cli import main

pytest.importorskip("torch")


def test_distill_pipeline_end_to_end(blur_set, tmp_path, capsys):
    images = blur_set[0].parent
    teach_dir, student = tmp_path / "teach", tmp_path / "student"
    assert main(["distill", "teach", "--teacher", "sharpness", "--images", str(images), "--pairs", "20",
                 "--out", str(teach_dir), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_points"] == 12 and out["n_pairs"] == 20 and out["pair_mode"] == "derived"
    assert main(["distill", "teach", "--teacher", "sharpness", "--images", str(images), "--pairs", "20",
                 "--out", str(teach_dir)]) == 0  # resumed: nothing left to judge; a one-line summary
    text = capsys.readouterr().out
    assert text.splitlines() == [text.splitlines()[0]] and "12 of 12 image(s) judged, 20 pair(s)" in text

    train = ["distill", "train", "--teacher-labels", str(teach_dir), "--student", "small_cnn",
             "--student-option", "channels=[8,16]", "--image-size", "32", "--batch-size", "4", "--epochs", "2",
             "--workers", "0", "--out", str(student)]
    assert main(train) == 0
    text = capsys.readouterr().out  # a few lines on stdout; the history goes to training.json
    assert len(text.splitlines()) == 3 and "student small-cnn: 2 epoch(s)" in text and "training.json" in text
    history = json.loads((student / "training.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert main([*train, "--format", "json"]) == 0  # resumed after epoch 2: the whole summary as JSON
    out = json.loads(capsys.readouterr().out)
    assert out["student"] == "small-cnn" and len(out["history"]) == 2 and out["resumed_from_epoch"] == 2

    assert main(["distill", "calibrate", str(student), "--labels", str(labels_csv(images)), "--root", str(images),
                 "--n", "6", "--kind", "isotonic"]) == 0
    text = capsys.readouterr().out
    assert "calibration: isotonic" in text and "held-out 6 image(s)" in text

    assert main(["score", str(images), "--method", "leaf", "--student", str(student), "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 12 and all(r["details"]["calibrated"] for r in rows)

    assert main(["distill", "info", str(student), "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["calibrated"] is True and info["student"] == "small-cnn"
    assert info["teacher"]["method"] == "sharpness"
    assert main(["distill", "info", str(student)]) == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) <= 6 and "teacher: sharpness" in text and "calibrated (isotonic)" in text


def test_train_help_lists_the_students(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["distill", "train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in ("small-cnn", "convnext-base", "convnext-tiny", "resnet-50"):
        assert name in text


def test_usage_and_data_errors(tmp_path, capsys):
    assert main(["distill", "train", "--teacher-labels", str(tmp_path), "--out", str(tmp_path / "s")]) == 1
    assert "not a teacher cache" in capsys.readouterr().err
    assert main(["distill", "train", "--teacher-labels", str(tmp_path), "--student", "vit-huge",
                 "--out", str(tmp_path / "s")]) == 2
    assert "known: convnext-base" in capsys.readouterr().err
    assert main(["score", str(tmp_path), "--method", "leaf"]) == 2
    assert "--student DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["distill", "calibrate", str(tmp_path), "--labels", "x.csv", "--fraction", "0.1", "--n", "5"])
    assert exc.value.code == 2
    assert main(["distill"]) == 2
    # a wrong --images is a set-up error that names the path, not the teacher, and leaves no cache folder
    out = tmp_path / "teach" / "koniq"
    assert main(["distill", "teach", "--teacher", "sharpness", "--images", str(tmp_path / "unlabeled"),
                 "--out", str(out)]) == 2
    assert f"no such file or folder: {tmp_path / 'unlabeled'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["distill", "teach", "--teacher", "sharpness", "--images", str(tmp_path / "empty"),
                 "--out", str(out)]) == 2
    assert "no images (.bmp, " in capsys.readouterr().err and not (tmp_path / "teach").exists()
