"""``lmmiqa methods``: aliases and presets listed; ``--presets`` shows every preset value beside lmmiqa's default,
with its source (text and JSON); methods without a paper preset say so."""

from __future__ import annotations

import json

from lmmiqa import registry
from lmmiqa.cli import main
from lmmiqa.methods.catalog import catalog, method_entry


def test_list_shows_aliases_and_presets(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith("`")}
    assert "aliases: qalign" in lines["q-align"]
    assert "presets: paper" in lines["iqarag"] and "presets: paper" in lines["leaf"]
    assert "presets: paper" in lines["agentic-iqa"] and "agentic" in lines["agentic-iqa"]
    assert "presets" not in lines["niqe"]
    assert main(["methods", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["iqarag"].startswith("IQARAG")  # name -> summary, as before


def test_presets_view_text(capsys):
    assert main(["methods", "iqarag", "leaf", "--presets"]) == 0
    out = capsys.readouterr().out
    assert "### lmmiqa score --method iqarag: preset `paper`" in out
    assert "| top_k | 50 | 50 | lmmiqa decision: the paper does not publish K (METHODS §2.3) |" in out
    for step in ("distill teach", "distill train", "distill calibrate"):
        assert f"### lmmiqa {step}: preset `paper`" in out
    assert "| student | small-cnn | convnext-base * |" in out  # differs from the default: marked
    assert "| fraction | (unset) | 0.1 * |" in out
    assert main(["methods", "niqe", "--presets"]) == 0
    assert "niqe has no `paper` preset" in capsys.readouterr().out
    assert main(["methods", "--presets"]) == 0
    out = capsys.readouterr().out
    assert "## agentic-iqa" in out and "Without a `paper` preset (lmmiqa's defaults only):" in out
    assert "## niqe" not in out


def test_presets_view_json_every_value_has_a_source(capsys):
    assert main(["methods", "--presets", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == set(registry.names("method"))
    for name, entry in data.items():
        assert entry["has_paper_preset"] == ("paper" in entry["presets"])
        for preset in [*entry["presets"].values(), *(p for t in entry["stage_presets"].values() for p in t.values())]:
            assert preset["values"], (name, preset["name"])
            for key, v in preset["values"].items():
                assert v["source"].strip(), (name, key)
                assert v["decision"] == v["source"].lower().startswith("lmmiqa decision")
    iq = data["iqarag"]["presets"]["paper"]["values"]
    assert iq["model"] == {"value": "Qwen/Qwen3-VL-8B-Instruct", "default": "Qwen/Qwen3-VL-8B-Instruct",
                           "has_default": True, "differs": False, "source": iq["model"]["source"], "decision": False}
    teach = data["leaf"]["stage_presets"]["distill teach"]["paper"]["values"]
    assert teach["model"]["has_default"] is False and teach["pair_mode"]["default"] == "auto"
    assert data["agentic-iqa"]["presets"]["paper"]["values"]["tools"]["value"] == ["niqe", "brisque", "ssim", "gmsd"]


def test_catalog_of_a_plugin_scorer_and_an_alias():
    entry = method_entry("test_presets:Constant")  # tests/test_presets.py: a scorer with a paper preset
    assert entry["has_paper_preset"] and entry["presets"]["paper"]["values"]["offset"]["default"] == 0.0
    assert entry["presets"]["paper"]["values"]["offset"]["differs"] is True
    assert list(catalog(["qalign"])) == ["q-align"]
