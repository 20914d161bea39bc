"""Offline proof of LEAF: a small CNN distilled from a classical tool keeps the tool's accuracy.

On a synthetic distortion ladder (built-in photos, 64x64, Gaussian blur / Gaussian noise / JPEG at 5 severities,
pseudo-MOS from the severity), BRISQUE (official LIVE model from the shared parameter files) teaches the
``small-cnn`` student through ``distill teach`` + ``distill train``; the student's SRCC against the pseudo-MOS must
come within 0.1 of BRISQUE's own SRCC on the same images. ``benchmarks/bench_leaf.py`` runs the larger version
(held-out references, more images) and the calibration-label curve.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("torch")


def test_small_cnn_student_keeps_the_teachers_srcc(tool_assets, tmp_path):
    import lmmiqa
    from lmmiqa.data.synth import make_ladder
    from lmmiqa.distill.teacher import TeacherConfig, load_teacher_labels, teach
    from lmmiqa.distill.train import TrainConfig, train_student
    from lmmiqa.errors import DataError
    from lmmiqa.evaluation.correlation import srcc

    try:
        ladder = make_ladder(tmp_path / "ladder", size=64, severities=5,
                             types=["gaussian_blur", "gaussian_noise", "jpeg"])
    except DataError as err:
        pytest.skip(f"no built-in sample photos for the ladder: {err}")
    summary = teach([it.path for it in ladder], tmp_path / "teach", TeacherConfig(method="brisque", pairs=400))
    assert summary.negated and summary.n_point_failures == 0  # BRISQUE is lower-is-better: negated in the cache
    train_student(
        tmp_path / "teach",
        tmp_path / "student",
        TrainConfig(student="small-cnn", student_options={"channels": [8, 16, 32, 64]}, image_size=64,
                    batch_size=16, epochs=8, seed=0, workers=0),
    )
    labels = load_teacher_labels(tmp_path / "teach")
    mos = {os.path.abspath(it.path): it.score for it in ladder}
    pseudo_mos = np.array([mos[p] for p in labels.images])
    teacher_srcc = srcc(labels.scores, pseudo_mos)
    results = lmmiqa.score(list(labels.images), method="leaf", student=str(tmp_path / "student"), device="cpu")
    student_srcc = srcc([r.score for r in results], pseudo_mos)
    print(f"BRISQUE teacher SRCC {teacher_srcc:.3f}, small-cnn student SRCC {student_srcc:.3f} on {len(pseudo_mos)} images")
    assert teacher_srcc > 0.5  # the teacher itself is informative on these distortions
    assert student_srcc >= teacher_srcc - 0.1
