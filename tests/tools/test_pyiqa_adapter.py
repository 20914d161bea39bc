"""The optional pyiqa adapter, tested with a stand-in ``pyiqa`` module (the real one is never installed in CI)."""

from __future__ import annotations

import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lmmiqa.errors import MissingDependencyError, UnknownNameError
from lmmiqa.tools import get_tool, list_tools, tool_catalog
from lmmiqa.tools import maps as M

torch = pytest.importorskip("torch")

CONFIGS = {
    "topiq_nr": {"metric_mode": "NR"},
    "musiq": {"metric_mode": "NR"},
    "lpips": {"metric_mode": "FR", "lower_better": True},
    "niqe": {"metric_mode": "NR", "lower_better": True},
}


class FakeMetric:
    """Records its inputs; returns the mean of the image (NR) or the mean absolute difference (FR)."""

    created = 0
    lock = threading.Lock()

    def __init__(self, name: str, device: str | None = None) -> None:
        with FakeMetric.lock:
            FakeMetric.created += 1
        self.name = name
        self.device = device
        self.lower_better = CONFIGS[name].get("lower_better", False)
        self.calls: list[tuple] = []

    def __call__(self, x, ref=None):
        self.calls.append((tuple(x.shape), str(x.dtype), None if ref is None else tuple(ref.shape)))
        value = x.mean() if ref is None else (x - ref).abs().mean()
        return value.reshape(1, 1)


@pytest.fixture()
def fake_pyiqa(monkeypatch):
    mod = types.ModuleType("pyiqa")
    mod.DEFAULT_CONFIGS = CONFIGS
    mod.list_models = lambda metric_mode=None: sorted(
        k for k, v in CONFIGS.items() if metric_mode is None or v["metric_mode"] == metric_mode
    )
    mod.created_metrics = []

    def create_metric(name, device=None, **kwargs):
        m = FakeMetric(name, device)
        mod.created_metrics.append(m)
        return m

    mod.create_metric = create_metric
    monkeypatch.setitem(sys.modules, "pyiqa", mod)
    FakeMetric.created = 0
    return mod


def test_pyiqa_metrics_appear_as_prefixed_tools(fake_pyiqa):
    names = list_tools()
    assert {"pyiqa:topiq_nr", "pyiqa:musiq", "pyiqa:lpips", "pyiqa:niqe"} <= set(names)
    assert "niqe" in names  # lmmiqa's own NIQE is not shadowed
    assert list_tools(include_pyiqa=False) == [n for n in names if not n.startswith("pyiqa:")]
    infos = {i.name: i for i in tool_catalog()}
    assert infos["pyiqa:lpips"].kind == "fr" and infos["pyiqa:lpips"].higher_is_better is False
    assert "TOPIQ" in infos["pyiqa:topiq_nr"].description
    assert fake_pyiqa.created_metrics == []  # listing builds no model


def test_nr_metric_runs_on_a_float_tensor(fake_pyiqa):
    tool = get_tool("pyiqa:topiq_nr", device="cpu")
    assert tool.kind == "nr" and tool.higher_is_better is True
    img = np.full((20, 30, 3), 51, dtype=np.uint8)
    r = tool.run(img)
    assert r.ok and r.raw == pytest.approx(0.2, rel=1e-6)
    (metric,) = fake_pyiqa.created_metrics
    assert metric.device == "cpu"
    assert metric.calls == [((1, 3, 20, 30), "torch.float32", None)]
    assert r.normalized is None and "lmmiqa tools fit --tool pyiqa:topiq_nr" in r.details["map_note"]


def test_fr_metric_gets_both_images_and_the_paper_map(fake_pyiqa):
    tool = get_tool("pyiqa:lpips")
    a = np.zeros((16, 16, 3), dtype=np.uint8)
    b = np.full((16, 16, 3), 255, dtype=np.uint8)
    r = tool.run(a, ref=b)
    assert r.raw == pytest.approx(1.0)
    assert fake_pyiqa.created_metrics[0].calls[0][2] == (1, 3, 16, 16)
    assert tool.map.source == "paper" and tool.map.params == M.PAPER_BETAS["lpips"]
    assert r.normalized == pytest.approx(M.paper_map("lpips").apply(1.0))
    assert tool.run(a).error is not None  # FR without a reference


def test_paper_maps_of_pyiqa_tools(fake_pyiqa):
    assert get_tool("pyiqa:niqe").map.params == M.PAPER_BETAS["niqe"]
    assert get_tool("pyiqa:musiq").map is None


def test_a_refitted_map_is_used(fake_pyiqa):
    M.save_fitted_map("pyiqa:musiq", M.ToolMap((0, 0, 0, 4.0, 1.0), "fitted", domain=(0.0, 1.0)))
    r = get_tool("pyiqa:musiq").run(np.full((8, 8, 3), 255, dtype=np.uint8))
    assert r.normalized == pytest.approx(5.0) and r.details["map"] == "fitted"


def test_model_is_created_once_under_concurrency(fake_pyiqa):
    tool = get_tool("pyiqa:musiq")
    imgs = [np.full((8, 8, 3), v, dtype=np.uint8) for v in range(0, 256, 16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        values = list(pool.map(tool.compute, imgs))
    assert FakeMetric.created == 1
    assert values == pytest.approx([v / 255 for v in range(0, 256, 16)], rel=1e-6)


def test_unknown_pyiqa_metric(fake_pyiqa):
    with pytest.raises(UnknownNameError, match="pyiqa:musiq"):
        get_tool("pyiqa:musik")


def test_without_pyiqa(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # makes `import pyiqa` fail
    assert not any(n.startswith("pyiqa:") for n in list_tools())
    with pytest.raises(MissingDependencyError, match="pip install pyiqa"):
        get_tool("pyiqa:topiq_nr")
