"""``lmmiqa reproduce``: the paper protocol on small local datasets beside published numbers (a model-free test
scorer with a paper preset and its own published rows), the pure pieces (splits, placeholders, comparison), the
refusals, resumption, and IQARAG's reference-bank protocol on a tiny VLM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmmiqa.cli import main
from lmmiqa.data.loader import load_dataset
from lmmiqa.evaluation.correlation import srcc
from lmmiqa.reproduce.published import PUBLISHED, Protocol
from lmmiqa.reproduce.report import ReproduceReport
from lmmiqa.reproduce.runner import compare, fill_placeholders, median_of_splits, protocol_parts

METHOD = "paper_scorer:SharpPaperScorer"


def _cli(ladder, koniq, out, *extra):
    return main(["reproduce", METHOD, "--dataset", f"koniq={koniq}", "--dataset", f"kadid10k={ladder}",
                 "--labels", f"kadid10k={ladder / 'labels.csv'}", "--dataset", f"spaq={ladder}",
                 "--labels", f"spaq={ladder / 'labels.csv'}", "--n-boot", "200", "--out", str(out), *extra])


# --------------------------------------------------------------------------- pure pieces


def test_protocol_parts(ladder, mini_koniq):
    kadid = load_dataset("kadid10k", root=ladder, labels=ladder / "labels.csv")
    (full,) = protocol_parts(kadid, Protocol("full"))
    assert (full.label, len(full.data)) == ("all", 30)
    splits = protocol_parts(kadid, Protocol("random-80-20", 3))
    assert [p.label for p in splits] == ["seed:0:test", "seed:1:test", "seed:2:test"]
    assert all(len(p.data) == 10 for p in splits)  # one of the three references (by reference image)
    (ref,) = protocol_parts(kadid, Protocol("reference-10-90"))
    assert ref.label == "ref10:seed:0:test" and len(ref.reference) == 10 and len(ref.data) == 20
    assert not set(ref.reference.groups()) & set(ref.data.groups())  # no content on both sides
    spaq = load_dataset("spaq", root=ladder, labels=ladder / "labels.csv")  # no-reference: by image
    (ref,) = protocol_parts(spaq, Protocol("reference-10-90"))
    assert (len(ref.reference), len(ref.data)) == (3, 27) and not set(ref.reference.paths()) & set(ref.data.paths())
    koniq = load_dataset("koniq10k", root=mini_koniq)
    (test,) = protocol_parts(koniq, Protocol("official-test"), limit=5)
    assert test.label == "official:test" and len(test.data) == 5 and {it.official for it in test.data} == {"test"}


def test_placeholders_comparison_and_median():
    opts = {"student": "s/{dataset}-{seed}", "n": 3, "more": ["{seed}"], "nested": {"x": "{seed}"}}
    assert fill_placeholders(opts, seed=4, dataset="spaq") == {
        "student": "s/spaq-4", "n": 3, "more": ["4"], "nested": {"x": "4"}}
    assert fill_placeholders("a{seed}", seed=None) == "a"
    c = compare(0.8, 0.75, (0.7, 0.82))
    assert c["within"] is True and c["diff"] == pytest.approx(-0.05)
    assert compare(0.9, 0.75, (0.7, 0.82))["within"] is False
    assert compare(0.9, 0.75, (float("nan"), float("nan")))["within"] is None
    assert median_of_splits([0.5, float("nan"), 0.7, 0.6]) == 0.6
    assert np.isnan(median_of_splits([float("nan")]))


def test_published_table_has_sources_and_every_method_row_is_consistent():
    from lmmiqa import registry

    methods = set(registry.names("method"))
    for row in PUBLISHED:
        assert row.method in methods and row.source and row.protocol.source
        assert row.runnable or row.why_not
        if row.runnable:
            for d in row.datasets:
                registry.canonical("dataset", d)  # a dataset lmmiqa has a record of
    assert {r.method for r in PUBLISHED} == {"llm-iqa", "iqarag", "leaf", "agentic-iqa", "q-align", "q-scorer"}
    assert any(not r.runnable and "not public" in r.why_not for r in PUBLISHED if r.method == "agentic-iqa")


# --------------------------------------------------------------------------- end to end (model-free scorer)


def test_reproduce_end_to_end_resume_and_report(ladder, mini_koniq, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(ladder, mini_koniq, out) == 0
    md = capsys.readouterr().out
    assert "# Reproducing paper_scorer:SharpPaperScorer" in md and "- preset: `paper`" in md
    assert "| measured SRCC [95 % CI] |" in md and "**synthetic stand-in**" in md
    assert "livec (a model that is not public; published SRCC 0.9 / PLCC 0.9): not runnable" in md
    report = ReproduceReport.load(out)
    assert (out / "report.md").read_text() == report.to_markdown()
    assert (out / "comparison.png").stat().st_size > 0
    rows = {(tuple(r["published"]["datasets"]), r["published"]["protocol"]["kind"]): r for r in report.rows}
    koniq = rows[(("koniq10k",), "official-test")]
    assert koniq["status"] == "compared" and koniq["n"] == 20  # the official test split of the mini folder
    m = report.datasets["koniq10k/official-test"]
    assert m["splits"][0]["split"] == "official:test" and m["srcc"] > 0.5  # sharper images have higher MOS
    lo, hi = koniq["srcc"]["ci"]
    assert lo <= m["srcc"] <= hi and koniq["srcc"]["within"] == (lo <= 0.5 <= hi)
    assert koniq["srcc"]["diff"] == pytest.approx(m["srcc"] - 0.5)
    # the run folder is `lmmiqa eval`'s: config, predictions, report with the preset recorded
    cfg = json.loads((out / "koniq10k" / "official-test" / "config.json").read_text())
    assert cfg["preset"] == "paper" and cfg["options"]["exponent"] == 2.0 and cfg["split"] == "official:test"
    assert json.loads((out / "koniq10k" / "official-test" / "report.json").read_text())["preset"] == "paper"
    assert main(["report", str(out / "koniq10k" / "official-test")]) == 0
    assert "| sharp-paper [paper] |" in capsys.readouterr().out  # `lmmiqa report` shows the preset too
    assert "- preset: paper (its values: `lmmiqa methods" in (out / "koniq10k" / "official-test" / "report.md").read_text()
    # three seeded splits of spaq scored once (their union), each split's numbers from the predictions
    spaq = report.datasets["spaq/random-80-20"]
    assert [s["split"] for s in spaq["splits"]] == ["seed:0:test", "seed:1:test", "seed:2:test"]
    assert spaq["srcc"] == pytest.approx(float(np.median([s["srcc"] for s in spaq["splits"]])))
    preds = [json.loads(x) for x in (out / "spaq" / "random-80-20" / "predictions.jsonl").read_text().splitlines()]
    ds = load_dataset("spaq", root=ladder, labels=ladder / "labels.csv").select("seed:1:test")
    by_path = {p["image"]: p["score"] for p in preds}
    assert spaq["splits"][1]["srcc"] == pytest.approx(srcc([by_path[p] for p in ds.paths()], ds.scores()))
    # the average row: mean of (SRCC + PLCC)/2 over its datasets, each under the row's own protocol (whole sets)
    avg = rows[(("kadid10k", "spaq"), "full")]
    kad, spaq_full = report.datasets["kadid10k/full"], report.datasets["spaq/full"]
    assert spaq_full["splits"][0]["split"] == "all" and spaq_full["splits"][0]["n"] == 30
    expected = ((kad["srcc"] + kad["plcc"]) / 2 + (spaq_full["srcc"] + spaq_full["plcc"]) / 2) / 2
    assert avg["mean"]["measured"] == pytest.approx(expected)
    assert avg["mean"]["published"] == 0.8 and avg["mean"]["diff"] == pytest.approx(expected - 0.8)

    # resume: nothing is scored again, the same numbers come out
    before = {p: p.stat().st_mtime_ns for p in out.rglob("predictions.jsonl")}
    assert _cli(ladder, mini_koniq, out) == 0
    capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("predictions.jsonl")} == before
    again = ReproduceReport.load(out)
    assert again.rows[0]["srcc"]["measured"] == report.rows[0]["srcc"]["measured"]
    # lmmiqa's defaults into the same folder: another configuration, refused without --force
    assert _cli(ladder, mini_koniq, out, "--preset", "default") == 2
    assert "different configuration" in capsys.readouterr().err


def test_default_preset_and_limit(ladder, mini_koniq, tmp_path, capsys):
    out = tmp_path / "defaults"
    assert main(["reproduce", METHOD, "--preset", "default", "--dataset", f"koniq={mini_koniq}", "--limit", "6",
                 "--n-boot", "50", "--no-plot", "--format", "json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["preset"] is None and data["limit"] == 6
    assert json.loads((out / "koniq10k" / "official-test" / "config.json").read_text())["options"]["exponent"] == 1.0
    assert "**partial**" in (out / "report.md").read_text() and "lmmiqa's defaults" in (out / "report.md").read_text()
    assert not (out / "comparison.png").exists()
    assert "- preset: none (lmmiqa's defaults)" in (out / "koniq10k" / "official-test" / "report.md").read_text()
    statuses = {tuple(r["published"]["datasets"]): r["status"] for r in data["rows"]}
    assert statuses[("koniq10k",)] == "compared" and statuses[("spaq",)] == "not run"


def test_refusals_say_why(ladder, mini_koniq, tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["reproduce", "paper_scorer:NoPresetScorer", "--dataset", f"koniq={mini_koniq}", "--out", out]) == 2
    assert "has no `paper` preset" in capsys.readouterr().err
    assert main(["reproduce", "niqe", "--dataset", f"koniq={mini_koniq}", "--out", out]) == 2
    assert "no published numbers for niqe" in capsys.readouterr().err
    assert main(["reproduce", METHOD, "--dataset", f"tid2013={ladder}", "--out", out]) == 2
    assert "no number lmmiqa can reproduce on tid2013; datasets with one: kadid10k, koniq10k, spaq" in \
        capsys.readouterr().err
    assert main(["reproduce", METHOD, "--dataset", f"koniq={tmp_path / 'nowhere'}", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "koniq10k: folder" in err and "not found" in err and "KonIQ-10k-official-sets.csv" in err
    assert main(["reproduce", METHOD, "--dataset", f"spaq={tmp_path}", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "no label file" in err and "SPAQ.csv" in err and "--labels spaq=CSV" in err
    assert main(["reproduce", METHOD, "--out", out]) == 2
    assert "--dataset NAME=DIR" in capsys.readouterr().err


def test_list_shows_the_papers_tables(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert "| llm-iqa | koniq10k | training-free, mPLUG-Owl3-7B-240728 | 0.864 | 0.875 |" in out
    assert "| iqarag | kadid10k, koniq10k, livec, spaq |" in out and "0.7972" in out
    assert "not runnable: the paper's fine-tuned Qwen2.5-VL-7B is not public" in out
    assert "- koniq10k: the KonIQ-10k folder DIR holds the label file KonIQ-10k.csv" in out
    assert main(["reproduce", "leaf", "--list"]) == 0
    assert "| agentic-iqa" not in capsys.readouterr().out


# --------------------------------------------------------------------------- IQARAG's protocol on a tiny VLM


def test_iqarag_reference_bank_protocol_on_a_tiny_vlm(ladder, tmp_path, tiny_model_path, capsys):
    """The paper preset (model swapped for a tiny VLM): per dataset, a bank of a seeded 10 % is built with the
    model's vision tower and the other 90 % scored; the average row over the paper's four datasets is compared."""
    pytest.importorskip("faiss")
    qwen = str(tiny_model_path("qwen2_5_vl"))
    out = tmp_path / "rag"
    args = ["reproduce", "iqarag", "--model", qwen, "--device", "cpu", "--limit", "3", "--n-boot", "50", "--no-plot",
            "--out", str(out)]
    for name in ("kadid10k", "koniq10k", "livec", "spaq"):
        args += ["--dataset", f"{name}={ladder}", "--labels", f"{name}={ladder / 'labels.csv'}"]
    assert main(args) == 0
    capsys.readouterr()
    report = ReproduceReport.load(out)
    (row,) = report.rows
    assert row["status"] == "compared" and row["mean"]["published"] == 0.7972
    assert set(row["per_dataset"]) == {"kadid10k", "koniq10k", "livec", "spaq"}
    from lmmiqa.retrieval.bank import Bank

    bank = Bank.load(out / "kadid10k" / "bank-seed0", index=False)
    assert bank.count == 10 and bank.encoder.kind == "vision-tower"  # one of the three references
    cfg = json.loads((out / "kadid10k" / "reference-10-90" / "config.json").read_text())
    assert cfg["preset"] == "paper" and cfg["options"]["references"] == 5 and cfg["options"]["model"] == qwen
    assert cfg["options"]["bank"] == str(out / "kadid10k" / "bank-seed0")
    preds = [json.loads(x) for x in (out / "kadid10k" / "reference-10-90" / "predictions.jsonl").read_text().splitlines()]
    bank_paths = {it.path for it in bank.items}
    assert len(preds) == 3 and not bank_paths & {p["image"] for p in preds}
    assert all(p["details"]["n_references"] >= 1 and p["details"]["preset"] == "paper" for p in preds)
    # run again: the banks are reused, nothing is scored again
    kept = [p for p in out.rglob("*") if p.is_file() and (p.name == "predictions.jsonl" or "bank-seed" in str(p))]
    before = {p: p.stat().st_mtime_ns for p in kept}
    assert len([p for p in kept if p.name == "predictions.jsonl"]) == 4 and len(kept) > 8
    assert main(args) == 0
    assert "reusing the reference bank" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before
