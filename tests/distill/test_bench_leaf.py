"""Smoke test of ``benchmarks/bench_leaf.py``'s report (table and plot) on a made-up result (no training)."""

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
    acc = {"n_train": 80, "n_test": 20, "size": 64, "types": ["jpeg"], "epochs": 3, "teach_seconds": 1.0,
           "train_seconds": 2.0, "raw_test_srcc": {"teacher": 0.7, "student": 0.6}, "fidelity_test_srcc": 0.9,
           "calibration": [{"labels": 10, **row}, {"labels": 80, **row}]}
    spd = {"n_images": 4, "image_size": 64, "repeats": 1, "threads": 2,
           "images_per_s": {"teacher q-align (tiny MLLM)": 10.0, "teacher brisque": 20.0, "student small-cnn@64": 40.0},
           "gflop_per_image": {"teacher q-align (tiny MLLM)": 0.02, "teacher brisque": None, "student small-cnn@64": 0.1}}
    table = bench._table(acc, spd, "brisque")
    assert "| 10 | 5 | 0.600 | 0.550 (0.500–0.600) | 0.700 | 0.650 | 0/1 |" in table
    assert "| student small-cnn@64 | 40.0 | 0.1 | 4.0 | 2.0 |" in table
    bench._plot(acc, tmp_path / "plot.png", "brisque")
    assert (tmp_path / "plot.png").stat().st_size > 1000
