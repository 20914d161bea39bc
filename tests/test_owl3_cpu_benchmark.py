"""Smoke test of benchmarks/bench_owl3_cpu.py on the tiny config (the benchmark itself runs full-size layers)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_layer_timings_add_up_to_the_prompt_estimate():
    import torch

    from lmmiqa.families.mplug_owl3.tiny import TINY_CONFIG

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_owl3_cpu.py"
    spec = importlib.util.spec_from_file_location("bench_owl3_cpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.measure(views=2, tokens=30, dtype=torch.float32, repeats=1, config=TINY_CONFIG)
    total = 2 * row["siglip_layer_s"] + 1 * row["decoder_layer_s"] + 2 * row["hyper_layer_s"] + row["lm_head_s"]
    assert row["prompt_s"] == pytest.approx(total) and row["patches"] == 729 and row["weights_gb"] > 0
