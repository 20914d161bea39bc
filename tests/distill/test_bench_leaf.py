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
        {"teacher": "niqe", "size": 512, "mode": "crops", "crop": 192, "n_crops": 9, "auto_views": True,
         "n_train": 250, "n_test": 100, "epochs": 12, "batch_size": 8, "teacher_srcc": 0.66, "student_srcc": 0.62,
         "fidelity": 0.8, "gap": 0.04, "teach_seconds": 3.0, "train_seconds": 90.0},
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
    # automatic views are shown as resolved by distill train, marked "(auto)"
    assert "| 512² | niqe | 9 crops of 192² (auto) | 12 / 8 | 0.660 | 0.620 | +0.040 ✓ |" in table
    assert "| 10 | 5 | 0.600 | 0.550 (0.500–0.600) | 0.700 | 0.650 | 0/1 |" in table
    # × tiny MLLM, × brisque, × the 8B teacher by FLOPs (3943 / 0.1)
    assert "| student small-cnn crops 4x64² (trained) | 40.0 | 0.1 | 4.0 | 2.0 | 39430 |" in table
    bench._plot_heldout(held, tmp_path / "heldout.png")
    bench._plot_labels(res["calibration"], tmp_path / "labels.png")
    assert (tmp_path / "heldout.png").stat().st_size > 1000 and (tmp_path / "labels.png").stat().st_size > 1000


def test_merge_of_a_merged_result_keeps_rows_and_part_times(tmp_path):
    """New parts merged into an earlier merged ``leaf.json``: all rows, and the earlier parts' times, kept."""
    pytest.importorskip("matplotlib")
    import json

    spec = importlib.util.spec_from_file_location("bench_leaf", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def row(teacher, size, crop, srcc):
        return {"teacher": teacher, "size": size, "mode": "crops", "crop": crop, "n_crops": 4, "n_train": 250,
                "n_test": 100, "epochs": 12, "batch_size": 8, "teacher_srcc": 0.6, "student_srcc": srcc,
                "fidelity": 0.5, "gap": 0.6 - srcc, "teach_seconds": 1.0, "train_seconds": 2.0}

    old = {"heldout": [row("niqe", 512, 64, 0.5)], "seconds": 300.0, "part_seconds": [120.0, 300.0]}
    new = {"heldout": [row("niqe", 512, 256, 0.58)], "seconds": 240.0}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    bench.merge([str(tmp_path / "old.json"), str(tmp_path / "new.json")], tmp_path / "out")
    res = json.loads((tmp_path / "out" / "leaf.json").read_text())
    assert res["part_seconds"] == [120.0, 300.0, 240.0]
    assert [r["crop"] for r in res["heldout"]] == [64, 256]
    assert "| 512² | niqe | 4 crops of 256² | 12 / 8 |" in (tmp_path / "out" / "leaf.md").read_text()
