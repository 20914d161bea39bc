"""Smoke test of ``benchmarks/bench_leaf.py``'s report (tables and plots) on a made-up result (no training)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_leaf.py"


def test_report_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("bench_leaf", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = {"seeds": 5, "refused": {"student": 0, "teacher": 1}, "student_srcc": 0.6, "student_plcc": 0.55,
           "teacher_srcc": 0.7, "teacher_plcc": 0.65, "student_plcc_range": [0.5, 0.6]}
    held = [
        {"teacher": "brisque", "size": 256, "mode": "crops", "crop": 64, "n_crops": 4, "n_train": 250, "n_test": 100,
         "epochs": 6, "teacher_srcc": 0.57, "student_srcc": 0.65, "fidelity": 0.62, "gap": -0.08,
         "teach_seconds": 3.0, "train_seconds": 90.0},
        {"teacher": "brisque", "size": 256, "mode": "resize", "crop": 128, "n_crops": 1, "n_train": 250,
         "n_test": 100, "epochs": 6, "teacher_srcc": 0.57, "student_srcc": 0.30, "fidelity": 0.2, "gap": 0.27,
         "teach_seconds": 3.0, "train_seconds": 90.0, "main": True},
    ]
    spd = {"n_images": 4, "image_size": 512, "repeats": 1, "threads": 2,
           "images_per_s": {"teacher q-align (tiny MLLM)": 10.0, "teacher brisque": 20.0,
                            "student small-cnn crops 4x64² (trained)": 40.0},
           "gflop_per_image": {"teacher q-align (tiny MLLM)": 0.02, "teacher brisque": None,
                               "student small-cnn crops 4x64² (trained)": 0.1}}
    res = {"heldout": held, "calibration": {"setting": "brisque, 256², crops",
                                            "rows": [{"labels": 10, **row}, {"labels": 80, **row}]}, "speed": spd}
    table = bench._table(res)
    assert "| 256² | brisque | 4 crops of 64² | 6 / 16 | 0.570 | 0.650 | -0.080 ✓ | 0.620 | 3 | 90 |" in table
    assert "| 256² | brisque | resize to 128² | 6 / 16 | 0.570 | 0.300 | +0.270 ✗ | 0.200 | 3 | 90 |" in table
    assert "| 10 | 5 | 0.600 | 0.550 (0.500–0.600) | 0.700 | 0.650 | 0/1 |" in table
    # × tiny MLLM, × brisque, × the 8B teacher by FLOPs (3943 / 0.1)
    assert "| student small-cnn crops 4x64² (trained) | 40.0 | 0.1 | 4.0 | 2.0 | 39430 |" in table
    bench._plot_heldout(held, tmp_path / "heldout.png")
    bench._plot_labels(res["calibration"], tmp_path / "labels.png")
    assert (tmp_path / "heldout.png").stat().st_size > 1000 and (tmp_path / "labels.png").stat().st_size > 1000
