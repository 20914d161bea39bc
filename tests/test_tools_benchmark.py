"""benchmarks/bench_tools.py feeds pyiqa the way its loader does and interleaves the two libraries (issue 25)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_tools.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_tools", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pyiqa_inputs_are_contiguous_float_nchw(bench):
    pytest.importorskip("torch")
    hwc = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    t = bench.to_pyiqa_tensor(hwc)
    assert tuple(t.shape) == (1, 3, 6, 8) and str(t.dtype) == "torch.float32"
    assert t.is_contiguous() and t.stride() == (144, 48, 8, 1)
    assert np.array_equal(t[0].permute(1, 2, 0).numpy(), hwc.astype(np.float32) / 255.0)


def test_calls_are_interleaved_image_by_image_and_the_order_swaps(bench):
    calls = list(bench.schedule(3, 2))
    assert [i for i, _ in calls] == [0, 0, 1, 1, 2, 2] * 2
    firsts = [lib for k, (_, lib) in enumerate(calls) if k % 2 == 0]
    assert firsts == ["lmmiqa", "pyiqa"] * 3  # alternates across passes too (odd image count)
    assert all({calls[k][1], calls[k + 1][1]} == {"lmmiqa", "pyiqa"} for k in range(0, len(calls), 2))
    # passes run one at a time continue the alternation
    assert list(bench.schedule(3, 1, start=3)) == calls[6:]


def test_lmmiqa_worker_answers_with_the_public_api_value(bench, tmp_path):
    from lmmiqa.tools import get_tool
    from lmmiqa.tools.assets import PACKAGE_DIR

    rng = np.random.default_rng(1)
    d, r = (rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(2))
    np.savez(tmp_path / "imgs.npz", **{"32x24_d0": d, "32x24_r0": r})
    worker = bench.Worker("lmmiqa", sys.executable, str(tmp_path / "imgs.npz"), str(PACKAGE_DIR))
    try:
        res = worker.call("psnr", "32x24", 0)
    finally:
        worker.close()
    assert res["value"] == get_tool("psnr").compute(d, r) and res["cpu"] >= 0.0
