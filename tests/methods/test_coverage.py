"""Covered mass (the level tokens' share of the next-token probability) shows a wrong prompt, template or model:
the pure share, the once-per-run warning with the model's top tokens, and its median in the eval report."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from lmmiqa.evaluation.report import EvalReport, covered_mass_summary
from lmmiqa.methods.coverage import (
    COVERED_MASS_THRESHOLD,
    LowCoveredMassWarning,
    check_covered_mass,
    is_low,
    low_mass_share,
    reset_low_mass_warnings,
)


@pytest.fixture(autouse=True)
def _rearm():
    reset_low_mass_warnings()
    yield
    reset_low_mass_warnings()


class TopBackend:
    """Stands in for a backend: a model id and the model's top next tokens of its last level call."""

    name = "fake"
    model_id = "fake-model"

    def __init__(self):
        self.asked = []

    def last_level_top(self, row, k=8):
        self.asked.append(row)
        return [("<think>", math.log(0.9)), ("The", math.log(0.05))][:k]


def test_threshold_and_share():
    assert COVERED_MASS_THRESHOLD == 0.5
    assert low_mass_share([]) == 0.0
    assert low_mass_share([0.1, 0.9, float("nan"), 0.5]) == pytest.approx(0.5)  # NaN counts as low, 0.5 is not
    assert not is_low([0.1, 0.9])  # half is not "most"
    assert is_low([0.1, 0.2, 0.9])
    assert not is_low([0.95, 0.99, 0.3])


def test_warns_once_per_run_with_the_top_tokens():
    be = TopBackend()
    cands = [" bad", " good"]
    with pytest.warns(LowCoveredMassWarning) as rec:
        msg = check_covered_mass([1e-4, 0.2, 0.9], backend=be, prompts=["p0", "p1", "p2"], candidates=cands,
                                 what="q-align")
    assert len(rec) == 1 and msg == str(rec[0].message)
    assert msg.startswith("q-align: the level tokens [' bad', ' good'] hold only 0.2 ")
    assert "'<think>' 0.9, 'The' 0.05" in msg and "fake-model" in msg and "67% below 0.5" in msg
    assert be.asked == [0]  # the top tokens of the lowest-mass prompt
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for the same model and candidates
        assert check_covered_mass([1e-4] * 3, backend=be, prompts=["a"] * 3, candidates=cands) is None
        # a batch that fits never warns
        assert check_covered_mass([0.9, 0.99], backend=be, prompts=["a", "b"], candidates=[" x"]) is None
    # another candidate set is another check; reset re-arms
    with pytest.warns(LowCoveredMassWarning):
        check_covered_mass([0.0], backend=be, prompts=["a"], candidates=["1", "2"])
    reset_low_mass_warnings()
    with pytest.warns(LowCoveredMassWarning):
        check_covered_mass([0.0], backend=be, prompts=["a"], candidates=cands)


def test_a_backend_without_top_tokens_still_warns():
    class Bare:
        name = "openai"
        model_id = "http://x/v1#m"

    with pytest.warns(LowCoveredMassWarning, match="the openai backend cannot list them"):
        check_covered_mass([0.01], backend=Bare(), prompts=["p"], candidates=[" A"])


def test_report_summary_markdown_and_json_roundtrip():
    assert covered_mass_summary([None, float("nan")]) == {}
    cm = covered_mass_summary([0.9, 0.2, None, 0.8, 0.1, 0.05])
    assert cm == {"median": 0.2, "n": 5, "n_low": 3, "threshold": 0.5}
    base = dict(method="q-align", model="m", dataset="d", split="all", n=5, n_failed=0, srcc=0.5, krcc=0.4,
                plcc=0.5, plcc_4pl=0.5, plcc_5pl=0.5, rmse=1.0, rmse_5pl=1.0)
    rep = EvalReport(**base, covered_mass=cm)
    md = rep.to_markdown()
    assert "median 0.2000 over 5 items, 3 below 0.5" in md and "**Low covered mass**" in md
    back = EvalReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert back.covered_mass == cm
    fine = EvalReport(**base, covered_mass=covered_mass_summary([0.9, 0.95]))
    assert "median 0.9250" in fine.to_markdown() and "Low covered mass" not in fine.to_markdown()
    assert "Covered mass" not in EvalReport(**base).to_markdown()  # methods without levels (tools)


def test_eval_reports_the_median_of_its_predictions(tiny_model_path, tmp_path):
    pytest.importorskip("torch")
    import lmmiqa
    from lmmiqa.data.synth import make_ladder
    from lmmiqa.testing import make_image

    make_ladder(tmp_path / "ladder", images=[(n, make_image(40, 40, seed=i)) for i, n in enumerate("ab")],
                types=["gaussian_blur"], size=32)
    out = tmp_path / "run"
    with pytest.warns(LowCoveredMassWarning, match="Its most likely next tokens: '"):  # random weights
        scorer = lmmiqa.create_scorer("q-align", model=str(tiny_model_path("qwen2_5_vl")), device="cpu")
        rep = lmmiqa.evaluate(scorer, dataset="synthetic", root=tmp_path / "ladder", out=out, n_boot=0, plot=False)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    masses = [r["details"]["covered_mass"] for r in rows]
    assert len(masses) == 10 and rep.covered_mass["n"] == 10
    assert rep.covered_mass["median"] == pytest.approx(float(np.median(masses)), rel=1e-12)
    assert json.loads((out / "report.json").read_text())["covered_mass"]["median"] == rep.covered_mass["median"]
    assert "Covered mass (the level tokens' share" in (out / "report.md").read_text()
    assert "**Low covered mass**" in (out / "report.md").read_text()


def _cli(args, **kw):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lmmiqa.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


def test_cli_score_warns_once_on_stderr_with_the_top_tokens(tiny_model_path, sample_images):
    pytest.importorskip("torch")
    r = _cli(["score", str(sample_images[0].parent), "--model", str(tiny_model_path("qwen2_5_vl")), "--device",
              "cpu", "--format", "jsonl", "--batch-size", "2"])
    assert r.returncode == 0, r.stderr
    # two batches, one warning, as one plain line (not `.../mllm.py:212: LowCoveredMassWarning: ...` + source)
    lines = [x for x in r.stderr.splitlines() if "hold only" in x]
    assert len(lines) == 1 and "LowCoveredMassWarning" not in r.stderr and ".py:" not in r.stderr, r.stderr
    assert lines[0].startswith("warning: q-align: the level tokens [' bad', ' poor', ' fair', ' good', ' excellent'] hold only")
    assert "Its most likely next tokens: '" in r.stderr
    assert len([x for x in r.stdout.splitlines() if x.strip()]) == 4  # the scores are still written


# the demo's explanation of its low covered mass: tests/test_cli_score.py (one demo run for both checks)
