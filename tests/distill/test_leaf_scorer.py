"""The ``leaf`` scorer and its artifact: loading errors, raw vs calibrated results, batching, calibration command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from leaf_helpers import blur_level, write_blur_set

import lmmiqa
from lmmiqa.distill.artifact import CALIBRATION_FILE, CONFIG_FILE, StudentArtifact
from lmmiqa.errors import ConfigError, DataError

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, student folder): a tiny small-cnn distilled from the sharpness cue on a blur set."""
    from lmmiqa.distill.teacher import TeacherConfig, teach
    from lmmiqa.distill.train import TrainConfig, train_student

    root = tmp_path_factory.mktemp("leaf")
    images = root / "images"
    write_blur_set(images)
    teach(images, root / "teach", TeacherConfig(method="cue_scorer:SharpnessTeacher", pairs=30))
    train_student(root / "teach", root / "student",
                  TrainConfig(student_options={"channels": [8, 16]}, image_size=32, batch_size=4, epochs=2, workers=0))
    return images, root / "student"


def labels_csv(images: Path) -> Path:
    """A generic label file for the blur set: MOS = 5 - blur level."""
    path = images.parent / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dis_img_path", "score"])
        for p in sorted(images.glob("*.png")):
            w.writerow([p.name, 5 - blur_level(p)])
    return path


def test_leaf_needs_a_student_folder():
    with pytest.raises(ConfigError, match="student=DIR"):
        lmmiqa.create_scorer("leaf")


def test_artifact_loading_errors(trained, tmp_path):
    with pytest.raises(DataError, match="not found"):
        StudentArtifact.load(tmp_path / "nope")
    with pytest.raises(DataError, match="not a LEAF student"):
        StudentArtifact.load(tmp_path)
    cfg = json.loads((trained[1] / CONFIG_FILE).read_text())
    for change, message in (({"kind": "something-else"}, "not a LEAF student"),
                            ({"schema_version": 99}, "schema version 99")):
        folder = tmp_path / message.replace(" ", "_")
        folder.mkdir()
        (folder / CONFIG_FILE).write_text(json.dumps({**cfg, **change}))
        with pytest.raises(DataError, match=message):
            StudentArtifact.load(folder)
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="no weights file"):
        StudentArtifact.load(tmp_path / "noweights")


def test_uncalibrated_results_are_raw_teacher_units(trained):
    images, student = trained
    results = lmmiqa.score(str(images), method="leaf", student=str(student), device="cpu")
    assert len(results) == 12 and all(r.ok for r in results)
    r = results[0]
    assert r.method == "leaf" and r.scale is None and r.higher_is_better is True
    assert r.details["calibrated"] is False and r.details["raw"] == r.score and r.probabilities is None
    assert r.model == str(student)
    json.dumps(r.to_dict(), allow_nan=False)


def test_batches_match_one_by_one_and_bad_images_fail_alone(trained, tmp_path):
    images, student = trained
    paths = sorted(str(p) for p in images.glob("*.png"))[:5]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    scorer = lmmiqa.create_scorer("leaf", student=str(student), device="cpu", batch_size=8)
    batch = scorer.score([*paths, str(bad)])
    single = [scorer.score(p)[0].score for p in paths]
    np.testing.assert_allclose([r.score for r in batch[:5]], single, rtol=1e-5, atol=1e-6)
    assert batch[5].error and batch[5].score is None


def test_calibration_gives_mos_scale_results(trained, tmp_path):
    import shutil

    from lmmiqa.data.loader import load_dataset
    from lmmiqa.distill.calibrate import CalibrateConfig, calibrate_student

    images, trained_student = trained
    student = tmp_path / "student"
    shutil.copytree(trained_student, student)
    ds = load_dataset(labels=labels_csv(images), root=images, score_range=(1.0, 5.0))
    report = calibrate_student(student, ds, CalibrateConfig(kind="linear", n=6, seed=0, device="cpu"))
    assert report.n_calibration == 6 and report.n_heldout == 6 and report.n_failed == 0
    data = json.loads((student / CALIBRATION_FILE).read_text())
    assert data["kind"] == "linear" and data["report"]["heldout"]["n"] == 6
    assert len(data["report"]["subset"]["images"]) == 6
    r = lmmiqa.score(str(images), method="leaf", student=str(student), device="cpu")[0]
    assert r.details["calibrated"] is True and r.details["calibration"] == "linear" and r.scale == (1.0, 5.0)
    line = data["params"]["a"] * r.details["raw"] + data["params"]["b"]
    assert r.score == pytest.approx(min(max(line, 1.0), 5.0))  # a line fitted on 6 labels extrapolates: clipped
    assert r.details.get("clipped_from", r.score) == pytest.approx(line)
    raw = lmmiqa.score(str(images), method="leaf", student=str(student), device="cpu", calibrated=False)[0]
    assert raw.scale is None and raw.score == pytest.approx(r.details["raw"])
    # a map that extrapolates past the scale: the score is clipped to it and the map's value kept beside it
    data["params"]["b"] += 10.0
    (student / CALIBRATION_FILE).write_text(json.dumps(data))
    high = lmmiqa.score(str(images), method="leaf", student=str(student), device="cpu")[0]
    assert high.score == 5.0 and high.scale == (1.0, 5.0)
    assert high.details["clipped_from"] == pytest.approx(r.details["raw"] * data["params"]["a"] + data["params"]["b"])


def test_importing_the_method_loads_no_torch():
    code = "import sys, lmmiqa.methods.leaf, lmmiqa.distill.train, lmmiqa.cli.distill; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
