"""Smoke test of benchmarks/gpu_throughput.py in its CPU ``--tiny`` mode (the GPU numbers need a GPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "arch,methods", [("qwen2_5_vl", "q-align,standard-guided,llm-iqa"), ("qwen3_vl", "q-align,standard-guided")]
)
def test_tiny_mode_measures_every_method(arch, methods, tiny_model_path, tmp_path, capsys):
    bench = _load()
    out = tmp_path / "rows.json"
    model = str(tiny_model_path(arch))
    rows = bench.main(["--tiny", "--model-path", model, "--methods", methods, "--sizes", "64x48", "--batch-sizes", "1,2",
                       "--peak-tflops", "0.5", "--json", str(out)])
    printed = capsys.readouterr().out
    assert printed.startswith(bench.HEADER.splitlines()[0])
    methods = {r.method for r in rows}
    assert {"q-align", "standard-guided"} <= methods
    for r in rows:
        assert r.images_per_s and r.images_per_s > 0, r
        assert r.tokens_per_prompt > 0
        assert r.gflops_per_image and r.gflops_per_image > 0
        # MFU and the physical limit follow from the counted FLOPs and the given peak
        assert r.limit_images_per_s == pytest.approx(0.5e12 / (r.gflops_per_image * 1e9))
        assert r.mfu == pytest.approx(r.gflops_per_image * 1e9 * r.images_per_s / 0.5e12)
        if r.prompts_per_image == 1:
            assert r.forward_images_per_s and r.forward_images_per_s > 0
            # counted FLOPs agree with 2 x parameters x tokens (+ the LM head; CPU attention is not counted)
            assert 0.98 <= r.gflops_per_image / r.analytic_gflops_per_image <= 1.3
        else:
            assert r.method == "llm-iqa" and r.prompts_per_image > 1  # the whole image plus its region crops
    data = json.loads(out.read_text())
    assert data["model"] == model and len(data["rows"]) == len(rows)


def test_published_configs_are_complete():
    bench = _load()
    for name, (arch, cfg, ip) in bench.MODELS.items():
        assert cfg["text_config"]["vocab_size"] > 150_000, name
        assert ip["patch_size"] == cfg["vision_config"]["patch_size"]
        assert ip["merge_size"] == cfg["vision_config"]["spatial_merge_size"]
        assert arch in ("qwen2_5_vl", "qwen3_vl")
    assert bench.bf16_peak("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert bench.bf16_peak("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert bench.bf16_peak("NVIDIA H200") == pytest.approx(989.4e12)
    assert bench.bf16_peak("Some CPU") is None


def test_analytic_flops_match_hand_arithmetic(capsys):
    bench = _load()
    rows = bench.main(["--analytic", "--model", "qwen2.5-vl-7b", "--methods", "q-align", "--sizes", "448x448"])
    (row,) = rows
    # By hand, Qwen2.5-VL-7B at 448x448: 32x32 = 1024 patches -> 256 image tokens (+ ~40 text tokens):
    #   LM matmuls 2 x 6.526e9 params x T, vision 2 x 0.631e9 x 1024 patches, merger 2 x 44.6e6 x 256,
    #   LM head 2 x 3584 x 152064, attention (LM 28 x 4 T^2 x 3584; vision 4 full + 28 windowed layers)
    t = row.tokens_per_prompt
    by_hand = 2 * 6.526e9 * t + 2 * 0.6314e9 * 1024 + 2 * 44.56e6 * 256 + 2 * 3584 * 152064
    by_hand += 28 * 4 * t**2 * 3584 + 4 * 4 * 1024**2 * 1280 + 28 * 16 * 4 * 64**2 * 1280
    assert 256 < t < 340
    assert row.gflops_per_image * 1e9 == pytest.approx(by_hand, rel=0.005)
    assert row.limit_images_per_s == pytest.approx(989.4e12 / (row.gflops_per_image * 1e9))
    assert "computed, not measured" in capsys.readouterr().out
