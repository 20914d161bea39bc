"""``lmmiqa score`` / ``methods`` / ``demo`` run as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmmiqa.cli import main

pytest.importorskip("torch")


def _run(args, env=None, **kw):
    env = env or {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lmmiqa.cli", *args], capture_output=True, text=True, env=env, **kw)


def test_version_and_methods(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "q-align" in out and "standard-guided" in out


def test_score_formats_and_out_resume(tmp_path, sample_images, tiny_model_path, capsys):
    model = str(tiny_model_path("qwen2_5_vl"))
    folder = str(sample_images[0].parent)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{sample_images[0]}\n{tmp_path / 'missing.png'}\n")
    out = tmp_path / "scores.jsonl"
    rc = main(["score", folder, f"@{lst}", "--method", "standard-guided", "--levels", "5", "--model", model,
               "--device", "cpu", "--format", "json", "--out", str(out), "--batch-size", "2"])
    assert rc == 0
    cap = capsys.readouterr()
    arr = json.loads(cap.out)
    assert len(arr) == len(sample_images) + 2
    assert arr[-1]["error"] and "not found" in arr[-1]["error"]
    assert all(1 <= d["score"] <= 5 for d in arr[:-1])
    assert "missing.png" in cap.err
    lines = out.read_text().splitlines()
    assert len(lines) == len(arr)
    # resume: already-scored images are skipped, the failed one is retried
    rc = main(["score", folder, f"@{lst}", "--method", "standard-guided", "--levels", "5", "--model", model,
               "--device", "cpu", "--format", "jsonl", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 1  # only the missing image was left, and it failed again
    assert "already scored" in cap.err
    assert len(cap.out.splitlines()) == 1
    for fmt, check in (("csv", lambda s: s.splitlines()[0].startswith("image,score")),
                       ("table", lambda s: s.splitlines()[0].startswith("image\tscore"))):
        assert main(["score", str(sample_images[1]), "--model", model, "--device", "cpu", "--format", fmt]) == 0
        assert check(capsys.readouterr().out)


def test_exit_codes_subprocess(tmp_path, tiny_model_path):
    model = str(tiny_model_path("qwen2_5_vl"))
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    r = _run(["score", str(bad), "--model", model, "--device", "cpu"])
    assert r.returncode == 1 and "not an image" in r.stderr
    r = _run(["score", str(bad), "--method", "qalgn"])
    assert r.returncode == 2 and "did you mean 'q-align'" in r.stderr
    r = _run(["score", str(bad), "--backend", "nope"])
    assert r.returncode == 2 and "known: openai, transformers" in r.stderr
    r = _run(["score", str(bad), "--method", "q-align", "--levels", "7"])
    assert r.returncode == 2 and "unknown option" in r.stderr
    r = _run(["score"])
    assert r.returncode == 2


def test_demo_runs_offline_and_explains_its_low_covered_mass(tmp_path):
    # one demo run (a fresh HOME, offline) for both: it runs end to end, and it explains rather than warns
    import numpy as np

    r = _run(["demo", "--dir", str(tmp_path / "demo"), "--format", "jsonl"], timeout=300,
             env={**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert len(rows) >= 3 and all(row["error"] is None for row in rows)
    assert "RANDOM weights" in r.stderr
    median = float(np.median([row["details"]["covered_mass"] for row in rows]))
    assert f"median {median:.4f}. It is low because the weights are random" in r.stderr
    assert "so the levels get about K/V = 5/" in r.stderr
    assert "LowCoveredMassWarning" not in r.stderr and "warning:" not in r.stderr  # explained, not warned about


def test_out_file_with_torn_last_line_resumes_cleanly(tmp_path, sample_images, tiny_model_path, capsys):
    model = str(tiny_model_path("qwen2_5_vl"))
    out = tmp_path / "s.jsonl"
    first = str(sample_images[0])
    assert main(["score", first, "--model", model, "--device", "cpu", "--out", str(out), "--format", "jsonl"]) == 0
    with out.open("a") as f:
        f.write('{"image": "' + str(sample_images[1]) + '", "sco')  # a run killed mid-write
    capsys.readouterr()
    assert main(["score", first, str(sample_images[1]), "--model", model, "--device", "cpu", "--out", str(out),
                 "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == [first, str(sample_images[1])]
    assert all(r["error"] is None for r in rows)
