"""LEAF's ``paper`` presets reach every step: ``distill teach/train/calibrate --preset paper`` and
``score --method leaf --preset paper`` (METHODS §3; :mod:`lmmiqa.distill.presets`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_leaf_scorer import labels_csv

from lmmiqa.cli import main
from lmmiqa.distill.calibrate import calibrate_config
from lmmiqa.distill.presets import PAPER_TEACHER_MODEL, STAGE_PRESETS
from lmmiqa.distill.teacher import teacher_config
from lmmiqa.distill.train import train_config
from lmmiqa.errors import ConfigError, UnknownNameError

pytest.importorskip("torch")


def test_stage_presets_reach_the_step_configs():
    t = teacher_config("paper", teacher_options={"device": "cpu"})
    assert (t.method, t.options, t.pair_mode, t.point_reliability, t.preset) == (
        "q-align", {"device": "cpu", "model": PAPER_TEACHER_MODEL}, "prompt", "entropy", "paper")
    # explicit options win; another teacher method does not get the preset teacher's model
    assert teacher_config("paper", teacher_options={"model": "m"}).options == {"model": "m"}
    other = teacher_config("paper", method="sharpness")
    assert other.method == "sharpness" and other.options == {} and other.pair_mode == "prompt"
    assert teacher_config(None, method="sharpness").preset is None
    tr = train_config("paper", w_kl=0.2, student=None)
    assert (tr.student, tr.pretrained, tr.w_kl, tr.preset) == ("convnext-base", True, 0.2, "paper")
    assert train_config().student == "small-cnn" and train_config().preset is None
    c = calibrate_config("paper")
    assert (c.fraction, c.kind, c.preset) == (0.1, "logistic", "paper")
    assert calibrate_config("paper", n=20).fraction is None  # an explicit n replaces the preset's fraction
    with pytest.raises(UnknownNameError, match="known: paper"):
        train_config("papr")
    with pytest.raises(ConfigError, match="unknown option"):
        train_config("paper", epoch=3)
    for step, presets in STAGE_PRESETS.items():
        assert all(v.source for v in presets["paper"].values.values()), step


def _tiny_convnext(folder: Path) -> Path:
    import torch
    from transformers import ConvNextConfig, ConvNextImageProcessor, ConvNextModel

    torch.manual_seed(0)
    ConvNextModel(ConvNextConfig(num_stages=2, depths=[1, 1], hidden_sizes=[8, 16])).save_pretrained(folder)
    ConvNextImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(folder)
    return folder


def test_teach_preset_reaches_an_mllm_teacher(blur_set, tmp_path, tiny_model_path, capsys):
    """``distill teach --preset paper`` with the paper's teacher model swapped for a tiny local VLM: the q-align
    teacher, prompt pairs and entropy reliability of the preset, recorded in teacher.json."""
    images = tmp_path / "four"
    images.mkdir()
    for p in blur_set[:4]:
        (images / p.name).write_bytes(p.read_bytes())
    qwen = str(tiny_model_path("qwen2_5_vl"))
    assert main(["distill", "teach", "--preset", "paper", "--teacher-model", qwen, "--device", "cpu",
                 "--images", str(images), "--pairs", "2", "--out", str(tmp_path / "teach"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pair_mode"] == "prompt" and out["n_points"] == 4
    cfg = json.loads((tmp_path / "teach" / "teacher.json").read_text())["config"]
    assert (cfg["preset"], cfg["method"], cfg["options"]["model"], cfg["point_reliability"]) == (
        "paper", "q-align", qwen, "entropy")


def test_paper_recipe_reaches_every_step_and_the_scorer(blur_set, tmp_path, capsys, caplog):
    """The paper's recipe with its models swapped for cheap local ones (explicit options win): every step records
    the preset, and the leaf scorer's results say the student was made by it."""
    images = blur_set[0].parent
    teach_dir, student = tmp_path / "teach", tmp_path / "student"
    assert main(["distill", "teach", "--preset", "paper", "--teacher", "sharpness", "--pair-mode", "derived",
                 "--images", str(images), "--pairs", "20", "--out", str(teach_dir)]) == 0
    capsys.readouterr()
    assert json.loads((teach_dir / "teacher.json").read_text())["config"]["preset"] == "paper"

    assert main(["distill", "train", "--preset", "paper", "--teacher-labels", str(teach_dir),
                 "--student-model", str(_tiny_convnext(tmp_path / "convnext")), "--image-size", "32",
                 "--batch-size", "4", "--epochs", "2", "--workers", "0", "--device", "cpu",
                 "--out", str(student), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["student"] == "convnext-base"  # the preset's student, from the local checkpoint
    training = json.loads((student / "training.json").read_text())
    assert training["config"]["preset"] == "paper" and training["config"]["pretrained"] is True

    labels = str(labels_csv(images))
    assert main(["distill", "calibrate", str(student), "--preset", "paper", "--labels", labels, "--root", str(images),
                 "--n", "6", "--kind", "isotonic", "--device", "cpu"]) == 0
    assert "calibration: isotonic" in capsys.readouterr().out

    caplog.set_level(logging.WARNING, logger="lmmiqa.methods.leaf")
    assert main(["score", str(images), "--method", "leaf", "--preset", "paper", "--student", str(student),
                 "--device", "cpu", "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 12
    recipe = {"distill teach": "paper", "distill train": "paper", "distill calibrate": "paper"}
    assert all(r["details"]["preset"] == "paper" and r["details"]["recipe"] == recipe for r in rows)
    assert all(r["details"]["calibrated"] for r in rows)
    assert not [r for r in caplog.records if "not made with that preset" in r.getMessage()]

    # calibrated again without the preset: the results say so and a warning names the step
    assert main(["distill", "calibrate", str(student), "--labels", labels, "--root", str(images), "--n", "6",
                 "--kind", "isotonic", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["score", str(blur_set[0]), "--method", "leaf", "--preset", "paper", "--student", str(student),
                 "--device", "cpu", "--format", "jsonl"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["details"]["recipe"]["distill calibrate"] is None
    assert any("distill calibrate: lmmiqa defaults" in r.getMessage() for r in caplog.records)


def test_teach_needs_a_teacher_or_a_preset(tmp_path, capsys):
    assert main(["distill", "teach", "--images", str(tmp_path), "--out", str(tmp_path / "t")]) == 2
    assert "--preset paper" in capsys.readouterr().err
