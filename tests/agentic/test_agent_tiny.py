"""The AgenticIQA agent end to end on a tiny random-weight Qwen2.5-VL: its replies are random text, so every
JSON stage exercises the retries and the documented fallbacks; the result must still be a marked, valid score."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lmmiqa
from lmmiqa.cli import main
from lmmiqa.testing import make_image

pytest.importorskip("torch")
pytest.importorskip("transformers")

OPTS = {"device": "cpu", "max_new_tokens": 8}


def _noisy_pair(tmp_path):
    ref = make_image(192, 192, seed=5)
    rng = np.random.default_rng(1)
    arr = np.clip(np.asarray(ref, dtype=np.float64) + rng.normal(0, 10, (192, 192, 3)), 0, 255).astype(np.uint8)
    ref_path, out_path = tmp_path / "ref.png", tmp_path / "out.png"
    ref.save(ref_path)
    from PIL import Image

    Image.fromarray(arr).save(out_path)
    return out_path, ref_path


def test_tiny_model_batch_retries_and_fallbacks(tiny_model_path, tmp_path):
    path = tiny_model_path("qwen2_5_vl")
    img_path = tmp_path / "a.png"
    make_image(128, 96, seed=0).save(img_path)
    scorer = lmmiqa.create_scorer("agentic-iqa", model=str(path), **OPTS)
    results = scorer.score([str(img_path), make_image(96, 128, seed=1)])
    assert [r.image for r in results] == [str(img_path), "<memory:1>"]
    for r in results:
        assert r.ok, r.error
        assert 1.0 <= r.score <= 5.0
        d = r.details
        # random text never parses: each JSON stage used 1 + 2 attempts, all counted, then its fallback
        assert d["plan"]["source"] == "fallback" and d["sources"]["plan"] == "fallback"
        assert d["parse_failures"] == sum(t.get("parse_failures", 0) for t in d["trace"])
        assert d["parse_failures_by_stage"]["planner"] == 3
        assert d["parse_failures"] >= 3 * 4  # planner, detection, tool selection, explanation
        assert d["sources"]["distortions"] == "fallback" and d["sources"]["tool_selection"] == "fallback"
        assert all(v["source"] == "fallback" for v in d["tool_selection"].values())
        assert d["explanation_source"] == "template" and "template" in d["explanation"]
        assert d["fusion"]["p_source"] == "logprobs"
        assert sum(d["fusion"]["p"].values()) == pytest.approx(1.0)
        assert d["backend_calls"] >= 13
        json.dumps(r.to_dict())
    # batched: the two images shared every backend call
    assert scorer.last_backend_calls == results[0].details["backend_calls"]


def test_tiny_model_cli_full_reference_json_and_text(tiny_model_path, tmp_path, capsys):
    path = tiny_model_path("qwen2_5_vl")
    out_path, ref_path = _noisy_pair(tmp_path)
    # no retries here (the batch test above covers them): the cheapest runs
    common = ["--model", str(path), "--device", "cpu", "--option", "max_new_tokens=8", "--option", "max_retries=0"]
    rc = main(["assess", str(out_path), "--ref", str(ref_path), "--query", "Is the sky banded after compression?",
               "--format", "json", *common])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["method"] == "agentic-iqa" and 1.0 <= d["score"] <= 5.0
    det = d["details"]
    assert det["mode"] == "full-reference" and det["query_given"]
    assert det["parse_failures"] == 5 and det["backend_calls"] == 6  # 5 JSON stages × 1 attempt, + the levels
    assert det["user_distortions"] == ["compression"]  # the fallback plan reads the query's distortion words
    assert det["tools"] and all(t["kind"] == "fr" for t in det["tools"].values())
    assert any(t["normalized"] is not None for t in det["tools"].values())
    assert det["fusion"]["q_bar"] is not None

    rc = main(["assess", str(out_path), "--tools", "sharpness,noise", "--progress", *common])
    assert rc == 0
    captured = capsys.readouterr()
    text = captured.out
    assert text.startswith(f"{out_path}: ") and "/ 5" in text
    assert "explanation (template):" in text and "plan (fallback)" in text
    # progress on stderr only: images done and each agent stage as it starts
    for stage in ("planner", "distortion detection", "tool execution", "summarizer", "1/1"):
        assert stage in captured.err, captured.err


def test_cli_usage_errors(tmp_path, capsys):
    img = tmp_path / "a.png"
    make_image(32, 32).save(img)
    assert main(["assess", str(img), str(img), "--ref", str(img)]) == 2
    assert "exactly one input image" in capsys.readouterr().err
    assert main(["assess", str(img), "--method", "q-align", "--query", "Sharp?"]) == 2
    assert "need an agentic method" in capsys.readouterr().err
    assert main(["assess", str(img), "--option", "max_replans=5"]) == 2
    assert "max_replans" in capsys.readouterr().err
    # a missing folder: its error once (stderr), not a second copy on stdout, and without the path twice
    assert main(["assess", f"{tmp_path}/photos/", "--method", "contrast"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.splitlines() == [f"lmmiqa assess: {tmp_path}/photos/: no such folder"]
