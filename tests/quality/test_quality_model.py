"""benchmarks/bench_quality_model.py (issue 22 §3): its LLM-IQA bookkeeping on a tiny model (fast), and every
method's held-out check on the quality-aware test model (slow: it trains the model on first use)."""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_quality_model.py"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_quality_model", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_llm_iqa_scores_exactly_the_half_tiles(tmp_path: pathlib.Path) -> None:
    """The crops LLM-IQA reports scoring are the half tiles: 4 per image, none straddling the middle, two over
    each half — so the degraded/pristine comparison of the benchmark compares the regions it claims to."""
    from lmmiqa.testing import tiny_vlm_cached

    bench = _bench()
    args = bench.main.__globals__["argparse"].Namespace(
        model=str(tiny_vlm_cached("qwen2_5_vl")), levels=5, severities=3, batch=4, half_kinds=["gaussian_noise"],
        ladder=None, size=64, seed=0, types=["gaussian_noise"], max_images=3, held_out_refs=None, held_out=1,
    )
    lad = bench.load_ladder(args)
    assert len(lad.held_out) == 1 and len(lad.train_refs) == 2
    assert {it.ref_id for it in lad.test.items} == set(lad.held_out)
    assert not {it.ref_id for it in lad.train.items} & set(lad.held_out)
    out = bench.run_llm_iqa(args, lad, {})
    assert out["cases"] == 2  # one held-out reference, degraded left and right
    for row in out["rows"]:
        assert row["straddling"] == 0
        assert row["degraded"] == row["degraded"] and row["pristine"] == row["pristine"]  # both halves scored


def test_markdown_table_lists_every_check_and_errors() -> None:
    bench = _bench()
    report = {
        "environment": {"date": "d", "machine": "m", "load": "0", "model": "x"},
        "held_out": ["refs/a.png"], "held_out_images": 5,
        "methods": {
            "q-align": {"srcc": 0.9, "plcc": 0.8, "seconds_total": 1.0,
                        "checks": [{"check": "c1", "value": 0.9, "target": ">= 0.7", "passed": True}]},
            "leaf": {"error": "RuntimeError: boom", "seconds_total": 0.5},
        },
    }
    md = bench.markdown(report)
    assert "| q-align | 0.900 | 0.800 | c1 | 0.900 | >= 0.7 | ✓ |" in md
    assert "error: RuntimeError: boom" in md and "✗" in md


@pytest.mark.slow(reason="trains (or loads the cached) quality-aware model and scores the held-out ladder")
@pytest.mark.parametrize("method", [
    "q-align", "standard-guided",
    pytest.param("llm-iqa", marks=pytest.mark.xfail(strict=True, reason=(
        "issue 22 open: the mixed score falls between the halves on 6 of 8 images (target 80 %); on grace_hopper "
        "the global view of the whole image rates it above its pristine half"))),
    pytest.param("iqarag", marks=pytest.mark.xfail(strict=True, reason=(
        "issue 22 open: the model was never trained on IQARAG's anchor prompts, so right and reversed anchor "
        "words give the same held-out SRCC"))),
])
def test_method_passes_its_semantic_check_on_the_quality_aware_model(method: str, tmp_path: pathlib.Path) -> None:
    bench = _bench()
    # no --model: the quality-aware model (built or loaded from its cache) on its own ladder and held-out photos
    report = bench.main(["--only", method, "--out", str(tmp_path / "r")])
    r = report["methods"][method]
    assert "error" not in r, r.get("error")
    failed = [c for c in r["checks"] if not c["passed"]]
    assert not failed, failed


def test_ladder_bank_anchor_words_follow_its_mos_bins_and_reversal_breaks_them(tmp_path: pathlib.Path) -> None:
    """An IQARAG bank of the training ladder: the word IQARAG shows for each item is its MOS bin's word; the
    reversed-MOS bank (the benchmark's wrong-word control) disagrees on all but the middle bin."""
    from lmmiqa.retrieval.testing import PixelEncoder

    bench = _bench()
    args = bench.main.__globals__["argparse"].Namespace(
        ladder=None, size=32, seed=0, types=["gaussian_blur"], max_images=3, severities=5, held_out_refs=None,
        held_out=1,
    )
    lad = bench.load_ladder(args)
    bank, agree = bench.ladder_bank(lad, False, tmp_path / "right", PixelEncoder())
    assert agree == 1.0 and len(bank.items) == 10
    assert {it.bin for it in bank.items} == {1, 2, 3, 4, 5}
    _, wrong = bench.ladder_bank(lad, True, tmp_path / "wrong", PixelEncoder())
    assert wrong == pytest.approx(0.2)  # only the middle severity keeps its word ("fair")
