"""``lmmiqa score --out FILE`` resumes only a run of the same method, model and options (issue 15, part 4)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def folder(tmp_path):
    from lmmiqa.testing import make_image

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        make_image(64, 48, seed=i).save(d / f"{i}.png")
    return d


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_other_method_is_refused_and_the_file_kept(run_cli, folder, tmp_path):
    out = tmp_path / "s.jsonl"
    r = run_cli(["score", folder, "--method", "contrast", "--out", out, "--format", "jsonl"])
    assert r.returncode == 0, r.stderr
    before = out.read_text()
    meta = json.loads((tmp_path / "s.jsonl.meta.json").read_text())
    assert meta["method"] == "contrast" and meta["model"] is None
    r = run_cli(["score", folder, "--method", "exposure", "--out", out])
    assert r.returncode == 2, r.stderr
    assert "holds results of another run: method 'contrast' (now 'exposure')" in r.stderr
    assert "--overwrite" in r.stderr and "nothing left to score" not in r.stderr
    assert out.read_text() == before and r.stdout == ""
    # --no-resume would append exposure rows to a contrast file: refused too
    r = run_cli(["score", folder, "--method", "exposure", "--out", out, "--no-resume"])
    assert r.returncode == 2 and out.read_text() == before
    # the same run resumes, whatever the batch size
    r = run_cli(["score", folder, "--method", "contrast", "--out", out, "--batch-size", "1"])
    assert r.returncode == 0, r.stderr
    assert "3 image(s) already scored" in r.stderr and "nothing left to score" in r.stderr
    assert len(_rows(out)) == 3


def test_overwrite_starts_the_file_over(run_cli, folder, tmp_path):
    out = tmp_path / "s.jsonl"
    assert run_cli(["score", folder, "--method", "contrast", "--out", out]).returncode == 0
    r = run_cli(["score", folder, "--method", "exposure", "--out", out, "--overwrite", "--format", "jsonl"])
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    assert len(rows) == 3 and {d["method"] for d in rows} == {"exposure"}
    assert json.loads((tmp_path / "s.jsonl.meta.json").read_text())["method"] == "exposure"
    r = run_cli(["score", folder, "--method", "exposure", "--overwrite"])
    assert r.returncode == 2 and "--overwrite applies to the --out file" in r.stderr
    # the results file deleted by hand, its sidecar left behind: a new run may use the name
    out.unlink()
    r = run_cli(["score", folder, "--method", "contrast", "--out", out])
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s.jsonl.meta.json").read_text())["method"] == "contrast"


def test_file_without_sidecar_is_judged_by_its_rows(run_cli, folder, tmp_path):
    # a results file written before the sidecar existed, holding q-align results (the case)
    out = tmp_path / "old.jsonl"
    rows = [{"image": str(p), "score": 3.2, "method": "q-align", "model": "Qwen/Qwen3-VL-8B-Instruct", "error": None}
            for p in sorted(folder.iterdir())]
    out.write_text("".join(json.dumps(d) + "\n" for d in rows))
    r = run_cli(["score", folder, "--method", "contrast", "--out", out])
    assert r.returncode == 2, r.stderr
    assert "method 'q-align' (now 'contrast')" in r.stderr and "model 'Qwen/Qwen3-VL-8B-Instruct' (now None)" in r.stderr
    assert len(_rows(out)) == 3


def test_other_model_or_option_is_refused(folder, tmp_path, tiny_model_path, capsys):
    # in process: the file check is the command's own logic, and the subprocess tests above run it as a user
    # would; here a model is loaded, which a fresh interpreter would pay a torch import for at every call
    pytest.importorskip("torch")
    from lmmiqa.cli import main

    a, b = str(tiny_model_path("qwen2_5_vl")), str(tiny_model_path("qwen2_5_vl", seed=1))
    out = tmp_path / "s.jsonl"
    base = ["score", str(folder), "--method", "standard-guided", "--device", "cpu", "--out", str(out)]
    assert main([*base, "--model", a, "--levels", "5"]) == 0
    capsys.readouterr()
    assert main([*base, "--model", b, "--levels", "5"]) == 2
    assert f"model {a!r} (now {b!r})" in capsys.readouterr().err
    assert main([*base, "--model", a, "--levels", "7"]) == 2
    assert "option levels=5 (now 7)" in capsys.readouterr().err
    assert main([*base, "--model", a, "--levels", "5"]) == 0
    assert "nothing left to score" in capsys.readouterr().err
    assert len(_rows(out)) == 3
