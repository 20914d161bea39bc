"""LEAF input views (issue 14): native-resolution crops, crop-averaged inference, schema 2 with old folders
loading, fidelity reporting, the one-way artifact/calibration dependency, and the leakage guards (issue 13 §5)."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from leaf_helpers import blur_level, write_blur_set

import lmmiqa
from lmmiqa.distill.artifact import CONFIG_FILE, TRAINING_FILE, StudentArtifact
from lmmiqa.distill.calibrate import choose_subset, likely_cause
from lmmiqa.distill.students import Preprocess, crop_positions
from lmmiqa.errors import ConfigError, DataError

SRC = Path(__file__).resolve().parents[2] / "src" / "lmmiqa"


# --------------------------------------------------------------------------- crop sampling (pure)


def test_crop_positions_grid_square_and_non_square():
    assert crop_positions(100, 100, 50, 4) == [(0, 0), (0, 50), (50, 0), (50, 50)]
    # a wide image gets one row of crops along its long side
    assert crop_positions(50, 200, 50, 3) == [(0, 0), (0, 75), (0, 150)]
    # a tall one a column
    assert crop_positions(200, 50, 50, 3) == [(0, 0), (75, 0), (150, 0)]
    # 9 on a square: a 3x3 grid including the centre
    pos = crop_positions(90, 90, 30, 9)
    assert len(pos) == 9 and (30, 30) in pos and (60, 60) in pos
    # asking for fewer crops than the grid has: evenly spaced, the first and last kept
    pos = crop_positions(100, 100, 50, 3)
    assert len(pos) == 3 and pos[0] == (0, 0) and pos[-1] == (50, 50)


def test_crop_positions_corners_deterministic_and_deduplicated():
    assert crop_positions(60, 80, 20, 5, "corners") == [(20, 30), (0, 0), (0, 60), (40, 0), (40, 60)]
    assert crop_positions(60, 80, 20, 5, "corners") == crop_positions(60, 80, 20, 5, "corners")
    # an image the size of the crop has a single view, whatever the count
    assert crop_positions(32, 32, 32, 9) == [(0, 0)]
    assert crop_positions(32, 32, 32, 5, "corners") == [(0, 0)]
    # along a side equal to the crop, positions collapse
    assert crop_positions(32, 96, 32, 4) == [(0, 0), (0, 21), (0, 43), (0, 64)]
    assert crop_positions(40, 32, 32, 4) == [(0, 0), (3, 0), (5, 0), (8, 0)]
    assert crop_positions(33, 32, 32, 4) == [(0, 0), (1, 0)]  # 4 rows on a 1-pixel range: 2 distinct
    with pytest.raises(ConfigError, match="smaller than"):
        crop_positions(20, 40, 32, 4)
    with pytest.raises(ConfigError, match="at most 5"):
        crop_positions(64, 64, 32, 6, "corners")
    with pytest.raises(ConfigError, match="known: grid, corners"):
        crop_positions(64, 64, 32, 4, "spiral")


def test_views_of_small_non_square_image_are_upscaled_not_padded():
    from PIL import Image

    pre = Preprocess(size=32, mode="crops", crops=4)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8))
    base = pre.base(img)
    assert base.shape == (32, 64, 3)  # shorter side to the crop side, aspect kept
    views = pre.views(base)
    assert views.shape == (4, 32, 32, 3)  # one row of 4 overlapping crops along the long side
    assert np.array_equal(views[0], base[:, :32]) and np.array_equal(views[-1], base[:, 32:])
    # a large image keeps its native pixels
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (100, 150, 3), dtype=np.uint8))
    b = pre.base(big)
    assert b.shape == (100, 150, 3) and np.array_equal(b, np.asarray(big))
    v = pre.views(b)
    assert v.shape == (4, 32, 32, 3) and np.array_equal(v[0], b[:32, :32]) and np.array_equal(v[-1], b[-32:, -32:])


def test_random_training_crops_are_seeded_and_in_bounds():
    pre = Preprocess(size=16, mode="crops")
    base = np.arange(40 * 50 * 3, dtype=np.int64).reshape(40, 50, 3).astype(np.uint8)
    a = [pre.random_view(base, np.random.default_rng([1, 2])) for _ in range(3)]
    b = [pre.random_view(base, np.random.default_rng([1, 2])) for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    rng = np.random.default_rng(0)
    seen = {pre.random_view(base, rng).tobytes() for _ in range(30)}
    assert len(seen) > 5  # positions vary
    assert pre.random_view(base, rng).shape == (16, 16, 3)
    # resize mode: the view is the array itself
    assert Preprocess(size=16).random_view(base[:16, :16], rng).shape == (16, 16, 3)


def test_image_bank_crops_are_deterministic_for_a_seed(tmp_path):
    from lmmiqa.distill.train import ImageBank

    paths = [str(p) for p in write_blur_set(tmp_path / "im", n_images=2, levels=2, size=48)]
    pre = Preprocess(size=16, mode="crops")
    a = ImageBank(paths, pre, workers=0).arrays([0, 1, 2], seed=(0, 1, 2, 3))
    b = ImageBank(paths, pre, workers=2).arrays([0, 1, 2], seed=(0, 1, 2, 3))
    c = ImageBank(paths, pre, workers=0).arrays([0, 1, 2], seed=(0, 1, 2, 4))
    assert a.shape == (3, 16, 16, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_preprocess_config_validation_and_round_trip():
    with pytest.raises(ConfigError, match="known: resize, center-crop, crops"):
        Preprocess(mode="tiles")
    with pytest.raises(ConfigError, match="crops must be >= 1"):
        Preprocess(mode="crops", crops=0)
    p = Preprocess(size=48, mode="crops", crops=9, crop_layout="grid")
    d = p.to_dict()
    assert d["crops"] == 9 and "native resolution" in d["training"]
    assert Preprocess.from_dict(d) == p
    # a version-1 preprocessing entry (no crop keys) reads as before
    assert Preprocess.from_dict({"size": 32, "mode": "resize", "mean": [0.5] * 3, "std": [0.5] * 3}).mode == "resize"


# --------------------------------------------------------------------------- a trained student


@pytest.fixture(scope="module")
def crops_student(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, student folder): small-cnn, 3 crops of 24² from 48² images, sharpness teacher."""
    pytest.importorskip("torch")
    from lmmiqa.distill.teacher import TeacherConfig, teach
    from lmmiqa.distill.train import TrainConfig, train_student

    root = tmp_path_factory.mktemp("crops")
    images = root / "images"
    write_blur_set(images, n_images=3, levels=4, size=48)
    teach(images, root / "teach", TeacherConfig(method="cue_scorer:SharpnessTeacher", pairs=30))
    train_student(root / "teach", root / "student",
                  TrainConfig(student_options={"channels": [4, 8]}, image_size=24, crops=3, batch_size=4, epochs=2,
                              workers=0, val_fraction=0.25))
    return images, root / "student"


def test_crop_average_and_spread_in_details(crops_student):
    images, student = crops_student
    cfg = json.loads((student / CONFIG_FILE).read_text())
    assert cfg["schema_version"] == 2
    assert cfg["preprocessing"]["mode"] == "crops" and cfg["preprocessing"]["crops"] == 3
    paths = sorted(str(p) for p in images.glob("*.png"))
    results = lmmiqa.score(paths[:2], method="leaf", student=str(student), device="cpu")
    art = StudentArtifact.load(student)
    pred = art.predictor("cpu")
    from PIL import Image

    for r, p in zip(results, paths[:2]):
        assert r.ok and r.details["calibrated"] is False and r.details["crops"] == 3
        views = pred.preprocess.views(pred.preprocess.base(Image.open(p).convert("RGB")))
        per_crop, _ = pred.predict_arrays(views)
        assert r.score == pytest.approx(float(np.mean(per_crop)), rel=1e-6, abs=1e-9)
        assert r.details["crop_std"] == pytest.approx(float(np.std(per_crop)), rel=1e-5, abs=1e-9)
        assert r.details["crop_std"] > 0


def test_training_records_fidelity_images_and_warns(crops_student):
    _, student = crops_student
    training = json.loads((student / TRAINING_FILE).read_text())
    fid = training["fidelity"]
    assert fid["n_val"] == 3 and -1 <= fid["val_srcc"] <= 1 and fid["n_train_checked"] == 9
    assert len(training["images"]["train"]) == 9 and len(training["images"]["val"]) == 3
    assert training["val_fraction"] == 0.25
    assert StudentArtifact.load(student).summary()["fidelity"] == fid  # shown by `distill info`

    from lmmiqa.distill.train import fidelity_warning

    assert fidelity_warning({"val_srcc": 0.9, "n_val": 10, "train_srcc": 0.1}) is None  # held-out decides
    msg = fidelity_warning({"val_srcc": -0.06, "n_val": 10, "train_srcc": 0.9})
    assert msg and "-0.060" in msg and "held-out" in msg
    assert "training" in fidelity_warning({"train_srcc": 0.05, "n_train_checked": 9})
    assert "only 80 optimizer steps" in fidelity_warning({"val_srcc": 0.1, "n_val": 9, "optimizer_steps": 80})
    assert "optimizer steps" not in fidelity_warning({"val_srcc": 0.1, "n_val": 9, "optimizer_steps": 2000})
    assert fid["optimizer_steps"] == 2 * 3  # 9 training images in batches of 4, 2 epochs

    from lmmiqa.distill.train import auto_epochs

    assert auto_epochs(313) == 10  # a large cache: 10 epochs
    assert auto_epochs(32) == 20  # 250 images in batches of 8 (bench_leaf): 20 epochs, 640 steps
    assert auto_epochs(5) == 128  # ~40 images in batches of 8: enough epochs for 640 steps
    assert auto_epochs(1) == 200  # capped


def test_version_1_folder_still_loads_and_scores(crops_student, tmp_path):
    """A schema-1 folder (whole-image resize, no crop keys, no recorded images) scores as before."""
    import shutil

    images, student = crops_student
    old = tmp_path / "v1"
    shutil.copytree(student, old)
    cfg = json.loads((old / CONFIG_FILE).read_text())
    cfg["schema_version"] = 1
    cfg["preprocessing"] = {k: v for k, v in cfg["preprocessing"].items()
                            if k in ("size", "mean", "std", "resample", "source")} | {"mode": "resize"}
    (old / CONFIG_FILE).write_text(json.dumps(cfg))
    training = json.loads((old / TRAINING_FILE).read_text())
    for k in ("images", "fidelity"):
        training.pop(k)
    for h in training["history"]:  # trained without a validation part
        h.pop("val_srcc_vs_teacher")
    (old / TRAINING_FILE).write_text(json.dumps(training))
    art = StudentArtifact.load(old)
    assert art.preprocess.mode == "resize"
    r = lmmiqa.score([str(sorted(images.glob("*.png"))[0])], method="leaf", student=str(old), device="cpu")[0]
    assert r.ok and "crops" not in r.details and r.details["calibrated"] is False
    # no recorded images: the teacher cache (still there) stands in for the training images
    assert len(art.used_images()["training"]) == 12
    assert "no fidelity" in likely_cause(art)


def test_cli_train_prints_fidelity(tmp_path, capsys):
    pytest.importorskip("torch")
    from lmmiqa.cli import main

    images = tmp_path / "images"
    write_blur_set(images, n_images=3, levels=4, size=32)
    # in process (the command's own code; tests/distill is on sys.path for the plugin teacher)
    assert main(["distill", "teach", "--teacher", "cue_scorer:SharpnessTeacher", "--images", str(images),
                 "--pairs", "20", "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert main(["distill", "train", "--teacher-labels", str(tmp_path / "t"), "--student-option", "channels=[4,8]",
                 "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25",
                 "--out", str(tmp_path / "s"), "--format", "json"]) == 0
    out = capsys.readouterr()
    assert "fidelity to the teacher (SRCC student vs teacher): held-out" in out.err
    assert json.loads(out.out)["fidelity"]["n_val"] == 3


# --------------------------------------------------------------------------- calibration causes


def _with_fidelity(student: Path, tmp_path: Path, fid: dict) -> StudentArtifact:
    import shutil

    folder = tmp_path / f"s{abs(hash(json.dumps(fid))) % 10_000}"
    shutil.copytree(student, folder)
    training = json.loads((folder / TRAINING_FILE).read_text())
    training["fidelity"] = fid
    (folder / TRAINING_FILE).write_text(json.dumps(training))
    return StudentArtifact.load(folder)


def test_likely_cause_names_the_student_or_the_teacher(crops_student, tmp_path):
    _, student = crops_student
    low = likely_cause(_with_fidelity(student, tmp_path, {"val_srcc": -0.06, "n_val": 10}))
    assert "did not learn its teacher" in low and "-0.060" in low and "label direction is probably not" in low
    high = likely_cause(_with_fidelity(student, tmp_path, {"val_srcc": 0.91, "n_val": 10}))
    assert "follows its teacher" in high and "--lower-better" in high


def test_calibration_refusal_names_the_cause(crops_student, tmp_path):
    """Labels that run against a faithful student: the error blames the teacher/labels, not the student."""
    from lmmiqa.data.loader import load_dataset
    from lmmiqa.distill.calibrate import CalibrateConfig, calibrate_student

    images, student = crops_student
    art = _with_fidelity(student, tmp_path, {"val_srcc": 0.95, "n_val": 3})
    raw = {r.image: r.score for r in lmmiqa.score(sorted(str(p) for p in images.glob("*.png")), method="leaf",
                                                   student=str(art.path), device="cpu")}
    labels = tmp_path / "anti.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dis_img_path", "score"])
        for p in sorted(images.glob("*.png")):
            w.writerow([p.name, -raw[str(p)]])  # exactly reversed
    ds = load_dataset(labels=str(labels), root=str(images))
    with pytest.raises(DataError, match="follows its teacher"):
        calibrate_student(art.path, ds, CalibrateConfig(fraction=0.5, device="cpu"))


# --------------------------------------------------------------------------- calibration by reference


def test_choose_subset_by_group_keeps_references_whole():
    groups = [f"ref{i // 5}" for i in range(40)]  # 8 references x 5 distortions
    idx = choose_subset(40, fraction=0.25, seed=3, groups=groups)
    chosen = {groups[i] for i in idx}
    assert len(idx) == 10 and len(chosen) == 2
    assert all(groups[i] not in chosen for i in set(range(40)) - set(idx.tolist()))
    assert np.array_equal(idx, choose_subset(40, fraction=0.25, seed=3, groups=groups))
    # at least one reference is left for the held-out part
    idx = choose_subset(40, fraction=1.0, seed=0, groups=groups)
    assert len({groups[i] for i in idx}) == 7
    # one image per group: the same as drawing images
    assert np.array_equal(choose_subset(40, count=6, seed=1, groups=[str(i) for i in range(40)]),
                          choose_subset(40, count=6, seed=1))


def _ref_labels(images: Path) -> Path:
    path = images.parent / "ref_labels.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dis_img_path", "score", "ref_img_path"])
        for p in sorted(images.glob("*.png")):
            w.writerow([p.name, 5 - blur_level(p), p.name.split("_blur")[0] + "_blur0.png"])
    return path


def test_calibrate_student_draws_by_reference(crops_student, tmp_path):
    import shutil

    from lmmiqa.data.loader import load_dataset
    from lmmiqa.distill.calibrate import CalibrateConfig, calibrate_student

    images, student = crops_student
    folder = tmp_path / "s"
    shutil.copytree(student, folder)
    ds = load_dataset(labels=str(_ref_labels(images)), root=str(images), ref_column="ref_img_path")
    assert ds.full_reference
    rep = calibrate_student(folder, ds, CalibrateConfig(n=4, device="cpu"))
    sub = rep.extra["subset"]
    assert sub["by"] == "reference image" and len(sub["images"]) == 4
    refs = {Path(p).name.split("_blur")[0] for p in sub["images"]}
    assert len(refs) == 1  # one whole reference (4 distortions), none shared with the held-out part
    assert len(sub["paths"]) == 4 and all(Path(p).is_file() for p in sub["paths"])


# --------------------------------------------------------------------------- leakage guard in eval


def test_eval_refuses_student_training_and_calibration_images(crops_student, tmp_path):
    import shutil

    from lmmiqa.data.loader import load_dataset
    from lmmiqa.distill.calibrate import CalibrateConfig, calibrate_student
    from lmmiqa.evaluation.runner import evaluate

    images, student = crops_student
    folder = tmp_path / "s"
    shutil.copytree(student, folder)
    labels = _ref_labels(images)
    with pytest.raises(ConfigError, match="12 of the 12 image.*not distilled or calibrated on.*--allow-overlap"):
        evaluate("leaf", labels=str(labels), root=str(images), method_options={"student": str(folder),
                                                                                  "device": "cpu"}, plot=False, n_boot=0)
    scorer = lmmiqa.create_scorer("leaf", student=str(folder), device="cpu")
    report = evaluate(scorer, labels=str(labels), root=str(images), allow_overlap=True, plot=False, n_boot=0)
    assert report.n == 12 and scorer.overlap == {"images": 12, "training": 12, "calibration": None, "overlapping": 12}
    assert report.overlap == {"n": 12, "of": 12, "allowed": True}
    assert scorer.describe()["overlap"]["overlapping"] == 12

    # images the student never saw, but its calibration subset: refused for the calibration images
    other = tmp_path / "other"
    write_blur_set(other, n_images=2, levels=4, size=48)
    for p in other.glob("*.png"):
        p.rename(p.with_name("x" + p.name))
    raw = {Path(r.image).name: r.score for r in lmmiqa.score(sorted(str(p) for p in other.glob("*.png")),
                                                             method="leaf", student=str(folder), device="cpu")}
    labels = other.parent / "other_labels.csv"
    with labels.open("w", newline="") as f:  # labels that agree with the student (calibration must succeed)
        w = csv.writer(f)
        w.writerow(["dis_img_path", "score", "ref_img_path"])
        for name, score in sorted(raw.items()):
            w.writerow([name, score, name.split("_blur")[0] + "_blur0.png"])
    ds = load_dataset(labels=str(labels), root=str(other), ref_column="ref_img_path")
    calibrate_student(folder, ds, CalibrateConfig(n=4, device="cpu"))
    scorer = lmmiqa.create_scorer("leaf", student=str(folder), device="cpu")
    assert scorer.check_overlap(ds.paths()) == 4
    assert scorer.overlap["training"] == 0 and scorer.overlap["calibration"] == 4


# --------------------------------------------------------------------------- module dependencies


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    return mods


def test_artifact_and_calibration_dependency_points_one_way():
    art = _imports(SRC / "distill" / "artifact.py")
    leaf = _imports(SRC / "methods" / "leaf.py")
    assert "lmmiqa.distill.calibrate" not in art and "lmmiqa.methods.leaf" not in art
    assert "lmmiqa.distill.calibrate" not in leaf
    from lmmiqa.distill import artifact, calibrate

    assert calibrate.Calibration is artifact.Calibration  # one home, re-exported
