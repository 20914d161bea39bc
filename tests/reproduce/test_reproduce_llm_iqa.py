"""``lmmiqa reproduce llm-iqa``: the paper preset on a tiny mPLUG-Owl3 in the published layout (the segmenter swapped
for the weight-free one, no SAM 2 weights here) over the miniature KonIQ, beside the paper's KonIQ number."""

from __future__ import annotations

import json
import pathlib

import pytest

from lmmiqa.cli import main

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def tiny_owl3(tmp_path_factory, shared_dir) -> pathlib.Path:
    from lmmiqa.families.mplug_owl3.tiny import make_tiny_checkpoint

    qwen2 = shared_dir / "data" / "hf" / "Qwen2.5-VL-7B-Instruct"
    if not (qwen2 / "vocab.json").is_file():
        pytest.skip(f"Qwen2 tokenizer files not found in {qwen2}")
    return make_tiny_checkpoint(tmp_path_factory.mktemp("owl3") / "ckpt", tokenizer_from=qwen2)


def test_reproduce_llm_iqa_with_the_paper_preset(mini_koniq, tiny_owl3, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["reproduce", "llm-iqa", "--dataset", f"koniq={mini_koniq}", "--model", str(tiny_owl3), "--device", "cpu",
               "--segmenter", "felzenszwalb", "--option", 'segmenter_options={"max_regions": 2}', "--limit", "4",
               "--n-boot", "50", "--no-plot", "--format", "json", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "llm-iqa" and data["preset"] == "paper"
    rows = {tuple(r["published"]["datasets"]): r for r in data["rows"]}
    koniq = rows[("koniq10k",)]
    assert koniq["status"] == "compared" and koniq["srcc"]["published"] == 0.864 and koniq["plcc"]["published"] == 0.875
    cfg = json.loads((out / "koniq10k" / "official-test" / "config.json").read_text())
    assert cfg["preset"] == "paper" and cfg["split"] == "official:test"
    opts = cfg["options"]
    assert opts["model"] == str(tiny_owl3) and opts["readout"] == "argmax" and opts["levels"] == 7
    preds = [json.loads(x) for x in (out / "koniq10k" / "official-test" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(p["error"] is None and 1 <= p["score"] <= 7 for p in preds)
    assert all(isinstance(p["details"]["greedy_is_level"], bool) for p in preds)
