"""The evaluation runner: Python API, run folders, resume, config guard, engines, reports, plots, CLI."""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stat_scorer import SharpnessScorer

import lmmiqa
from lmmiqa.cli import main
from lmmiqa.data import load_dataset
from lmmiqa.errors import ConfigError, DataError, UnknownNameError
from lmmiqa.evaluation import runner
from lmmiqa.evaluation.report import EvalReport
from lmmiqa.evaluation.runner import PredictionStore, evaluate
from lmmiqa.types import ScoreResult

HERE = Path(__file__).resolve().parent
METHOD = "stat_scorer:SharpnessScorer"


def lines_of(rundir: Path) -> list[dict]:
    return [json.loads(x) for x in (rundir / "predictions.jsonl").read_text().splitlines() if x.strip()]


def test_evaluate_writes_a_complete_run_folder(ladder, tmp_path):
    out = tmp_path / "run"
    rep = lmmiqa.evaluate(SharpnessScorer(), dataset="synthetic", root=ladder, split="seed:0:train", out=out,
                          n_boot=100)
    assert isinstance(rep, lmmiqa.EvalReport)
    assert {p.name for p in out.iterdir()} >= {"config.json", "predictions.jsonl", "report.json", "report.md",
                                               "scatter.png"}
    assert rep.n == rep.n_total == 120 and rep.n_failed == 0 and not rep.partial
    assert rep.dataset == "synthetic" and rep.split == "seed:0:train" and rep.synthetic
    assert rep.srcc > 0.2 and -1 <= rep.plcc <= 1 and rep.plcc_4pl >= abs(rep.plcc) - 1e-9
    assert rep.ci["unit"] == "reference" and rep.ci["n_units"] == 3 and rep.ci["n_boot"] == 100
    assert set(rep.fit_converged) == {"logistic4", "logistic5"}
    assert rep.oriented["negated_predictions"] is False
    d = json.loads((out / "report.json").read_text())
    assert d["srcc"] == pytest.approx(rep.srcc) and d["plcc_4pl"] == pytest.approx(rep.plcc_4pl)
    assert EvalReport.load(out).to_dict()["srcc"] == pytest.approx(rep.srcc)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "test-sharpness" and cfg["split"] == "seed:0:train"
    assert cfg["dataset"]["name"] == "synthetic" and cfg["versions"]["lmmiqa"] == lmmiqa.__version__
    recs = lines_of(out)
    assert len(recs) == 120 and all(set(r) == set(ScoreResult("x", 1.0, "m").to_dict()) for r in recs)
    md = (out / "report.md").read_text()
    assert "PLCC (raw, no fit)" in md and "PLCC after 4PL fit" in md and "Synthetic labels" in md


def test_resume_adds_nothing_and_config_changes_are_refused(ladder, tmp_path):
    out = tmp_path / "run"
    first = evaluate(SharpnessScorer(), "synthetic", ladder, "seed:1", out, n_boot=50)
    mtime = (out / "predictions.jsonl").stat().st_mtime_ns
    again = evaluate(SharpnessScorer(), "synthetic", ladder, "seed:1", out, n_boot=50, batch_size=3)
    assert (out / "predictions.jsonl").stat().st_mtime_ns == mtime  # batch size is not part of the config
    assert again.srcc == first.srcc and len(lines_of(out)) == first.n_total
    with pytest.raises(ConfigError, match=r"options.delay: 0.0 -> 0.01.*--force"):
        evaluate(SharpnessScorer.from_options(delay=0.01), "synthetic", ladder, "seed:1", out)
    with pytest.raises(ConfigError, match=r"dataset.split: 'seed:1:test' -> 'seed:2:test'"):
        evaluate(SharpnessScorer(), "synthetic", ladder, "seed:2", out)
    forced = evaluate(SharpnessScorer(), "synthetic", ladder, "seed:2", out, force=True, n_boot=0)
    assert forced.split == "seed:2:test" and len(lines_of(out)) == forced.n_total


def test_limit_gives_a_partial_report_and_extends_on_resume(ladder, tmp_path):
    out = tmp_path / "run"
    rep = evaluate(SharpnessScorer(), "synthetic", ladder, out=out, limit=10, n_boot=0, plot=False)
    assert rep.partial and rep.limit == 10 and rep.n_total == 10 and len(lines_of(out)) == 10
    assert "Partial run" in (out / "report.md").read_text()
    full = evaluate(SharpnessScorer(), "synthetic", ladder, out=out, n_boot=0, plot=False)
    assert not full.partial and full.n == 160 and len(lines_of(out)) == 160


def test_failures_are_counted_and_can_be_retried(ladder, tmp_path):
    out = tmp_path / "run"
    scorer = SharpnessScorer.from_options(fail_every=4)
    rep = evaluate(scorer, "synthetic", ladder, out=out, n_boot=0, plot=False)
    assert rep.n_failed > 0 and rep.n + rep.n_failed == 160
    assert rep.failures and rep.failures[0]["error"] == "synthetic failure"
    again = evaluate(scorer, "synthetic", ladder, out=out, n_boot=0, plot=False, retry_failed=True)
    images = [r["image"] for r in lines_of(out)]
    assert len(images) == len(set(images)) == 160 and again.n_failed == rep.n_failed


def test_lower_is_better_methods_are_negated_and_say_so(ladder):
    rep = evaluate(SharpnessScorer.from_options(lower_is_better=True), "synthetic", ladder, n_boot=0)
    ref = evaluate(SharpnessScorer(), "synthetic", ladder, n_boot=0)
    assert rep.oriented["negated_predictions"] is True and "lower-is-better" in rep.oriented["reason"]
    assert rep.srcc == pytest.approx(ref.srcc) and rep.plcc_4pl == pytest.approx(ref.plcc_4pl, abs=1e-6)
    assert rep.run_dir is None  # in memory


def test_method_names_options_and_engines(ladder, monkeypatch):
    with pytest.raises(UnknownNameError, match="known: .*q-align"):
        evaluate("q-alig", "synthetic", ladder)
    with pytest.raises(ConfigError, match="cannot import scorer class"):
        evaluate("no_such_module:X", "synthetic", ladder)
    with pytest.raises(UnknownNameError, match="unknown engine 'spark'"):
        evaluate(SharpnessScorer(), "synthetic", ladder, engine="spark")
    seen: list[int] = []

    def reverse_engine(scorer, pending, on_results, *, batch_size=None, progress=None):
        seen.append(len(pending))
        for path in reversed(pending):
            on_results(scorer.score([path]))

    monkeypatch.setitem(runner.ENGINES, "reverse", reverse_engine)
    a = evaluate(METHOD, "synthetic", ladder, n_boot=0, engine="reverse", method_options={"fail_every": 0})
    b = evaluate(SharpnessScorer(), "synthetic", ladder, n_boot=0)
    assert seen == [160] and a.srcc == pytest.approx(b.srcc) and a.method == "test-sharpness"


def test_prediction_store_repairs_an_interrupted_tail(tmp_path):
    store = PredictionStore(tmp_path / "p.jsonl")
    store.append([ScoreResult("a", 1.0, "m"), ScoreResult("b", 2.0, "m")])
    with (tmp_path / "p.jsonl").open("a") as f:
        f.write('{"image": "c", "sco')
    assert set(store.load()) == {"a", "b"}
    assert (tmp_path / "p.jsonl").read_text().endswith("}\n")  # torn tail cut off
    with (tmp_path / "p.jsonl").open("a") as f:
        f.write(json.dumps(ScoreResult("c", 3.0, "m").to_dict()))  # complete but its newline was lost
    assert set(store.load()) == {"a", "b", "c"}
    store.append([ScoreResult("d", 4.0, "m")])
    assert [r["image"] for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())] == list("abcd")
    (tmp_path / "p.jsonl").write_text('{"image": "a"}\nnot json\n{"image": "b"}\n')
    with pytest.raises(DataError, match="line 2 is not a result"):
        store.load()
    (tmp_path / "p.jsonl").write_text('{"image": "a"}\n{"image": "a"}\n')
    with pytest.raises(DataError, match="appears twice"):
        store.load()


def test_run_folder_without_config_is_not_resumed(ladder, tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"image": "x"}\n')
    with pytest.raises(ConfigError, match="no config.json"):
        evaluate(SharpnessScorer(), "synthetic", ladder, out=tmp_path)


# --------------------------------------------------------------------------- kill and resume


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_without_loss_or_duplicates(ladder, tmp_path, sig):
    out = tmp_path / "run"
    args = ["eval", "--method", METHOD, "--option", "delay=0.05", "--batch-size", "4", "--dataset", "synthetic",
            "--root", str(ladder), "--out", str(out), "--n-boot", "0", "--no-plot"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "lmmiqa.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    preds = out / "predictions.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if preds.exists() and preds.read_bytes().count(b"\n") >= 8:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"run ended before it could be interrupted: {proc.stderr.read().decode()}"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode != 0 and not (out / "report.json").exists()
    done = preds.read_bytes().count(b"\n")
    assert 8 <= done < 160
    with preds.open("a") as f:  # and, for good measure, a torn line from a write in flight
        f.write('{"image": "' + str(ladder))
    assert main(args) == 0  # resume in-process
    counts = collections.Counter(r["image"] for r in lines_of(out))
    expected = load_dataset("synthetic", root=ladder).paths()
    assert set(counts) == set(expected) and set(counts.values()) == {1}
    assert json.loads((out / "report.json").read_text())["n"] == 160


# --------------------------------------------------------------------------- CLI, reports, plots


def test_eval_cli_and_report_command(ladder, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["eval", "--method", METHOD, "--dataset", "synthetic", "--root", str(ladder), "--out", str(a),
                 "--n-boot", "20", "--format", "json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == 160 and rep["method"] == "test-sharpness"
    # the same images as a generic CSV: a second "dataset" for the cross-dataset matrix
    assert main(["eval", "--method", METHOD, "--labels", str(ladder / "labels.csv"), "--root", str(ladder),
                 "--ref-column", "ref_img_path", "--split", "seed:0", "--out", str(b), "--n-boot", "0"]) == 0
    assert "# test-sharpness on csv (seed:0:test)" in capsys.readouterr().out
    # a changed configuration is a usage error
    assert main(["eval", "--method", METHOD, "--option", "delay=0.5", "--dataset", "synthetic", "--root",
                 str(ladder), "--out", str(a)]) == 2
    assert "different configuration" in capsys.readouterr().err

    assert main(["report", str(a), str(b)]) == 0
    md = capsys.readouterr().out
    assert "| test-sharpness | - | synthetic (synthetic) | all | 160 |" in md
    assert "Cross-dataset matrix" in md and "| test-sharpness | " in md.split("Cross-dataset matrix")[1]
    assert main(["report", str(a), str(b), "--format", "json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert len(js["runs"]) == 2 and js["matrix"]["datasets"] == ["csv", "synthetic"]
    assert main(["report", str(a), str(tmp_path / "missing"), "--format", "csv"]) == 1
    cap = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(cap.out)))
    assert len(rows) == 1 and rows[0]["dataset"] == "synthetic" and "skipping" in cap.err


def test_a_fit_that_fell_back_is_named_and_keeps_the_sign(ladder, tmp_path, capsys):
    a = tmp_path / "a"
    assert main(["eval", "--method", METHOD, "--dataset", "synthetic", "--root", str(ladder), "--out", str(a),
                 "--n-boot", "0", "--no-plot", "--limit", "4"]) == 0  # 4 items: too few for the 4PL and 5PL
    md = capsys.readouterr().out
    rep = EvalReport.load(a)
    assert rep.fell_back("logistic4") == "a line" and rep.fell_back("logistic5") == "a line"
    assert np.sign(rep.plcc_4pl) == np.sign(rep.plcc) == np.sign(rep.plcc_5pl) != 0  # never a flipped sign
    assert f"| PLCC after 4PL fit (**fell back to a line**) | {rep.plcc_4pl:.4f} |" in md
    assert main(["report", str(a)]) == 0
    table = capsys.readouterr().out
    assert f"| {rep.plcc_4pl:.4f} (a line) | {rep.plcc_5pl:.4f} (a line) |" in table and "fell back" in table
    assert main(["report", str(a), "--format", "csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["fit_4pl"] == "a line" and row["fit_5pl"] == "a line"


def test_scatter_png_opens_with_expected_size(ladder, tmp_path):
    out = tmp_path / "run"
    evaluate(SharpnessScorer(), "synthetic", ladder, out=out, n_boot=0)
    with Image.open(out / "scatter.png") as im:
        assert im.format == "PNG" and im.size == (600, 600)
        assert np.asarray(im.convert("L")).std() > 5  # something was drawn


def test_scatter_plot_with_degenerate_input(tmp_path):
    from lmmiqa.evaluation.logistic import fit_logistic4
    from lmmiqa.evaluation.plots import scatter_plot

    x = np.array([1.0, 1.0, np.nan])
    path = scatter_plot(x, [1.0, 2.0, 3.0], tmp_path / "s.png", fit=fit_logistic4(x, [1.0, 2.0, 3.0]))
    assert Image.open(path).size == (600, 600)


# --------------------------------------------------------------------------- levels-bound on real labels


def test_levels_bound_on_real_koniq_labels(shared_dir, capsys):
    labels = shared_dir / "data" / "labels" / "KonIQ-10k.csv"
    assert main(["levels-bound", "--labels", str(labels), "--levels", "3", "5", "7", "9", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["labels"] == str(labels) and out["n"] == 10073 and "K+1" in out["note"]
    ks = out["levels"]
    assert [r["k"] for r in ks] == [3, 5, 7, 9]
    means = [r["mean"] for r in ks]
    assert means == sorted(means) and 0.75 < means[0] < means[-1] < 1
    for r in ks:
        assert r["mean"] == pytest.approx((r["srcc"] + r["plcc"]) / 2)
    assert main(["levels-bound", "--dataset", "koniq10k", "--labels",
                 str(shared_dir / "data" / "labels" / "KonIQ-10k-official-sets.csv"), "--split", "official"]) == 0
    assert "n = 2015" in capsys.readouterr().out


# --------------------------------------------------------------------------- a real MLLM method (tiny model)


def test_eval_with_q_align_on_a_tiny_model(ladder, tmp_path, tiny_model_path, capsys):
    model = tiny_model_path("qwen2_5_vl")
    out = tmp_path / "run"
    rc = main(["eval", "--method", "q-align", "--model", str(model), "--device", "cpu", "--dtype", "float32",
               "--dataset", "synthetic", "--root", str(ladder), "--split", "seed:0", "--limit", "8",
               "--batch-size", "4", "--out", str(out), "--n-boot", "20", "--no-plot", "--format", "json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["method"] == "q-align" and rep["model"] == str(model)
    assert rep["n"] == 8 and rep["n_failed"] == 0 and rep["partial"] is True
    recs = lines_of(out)
    assert len(recs) == 8 and all(1.0 <= r["score"] <= 5.0 for r in recs)
    assert all(abs(sum(r["probabilities"].values()) - 1.0) < 1e-4 for r in recs)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == str(model) and cfg["options"]["device"] == "cpu"
