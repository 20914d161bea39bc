"""Refitted tool maps are chosen explicitly for the agent (issue 13 §5): never a silent default from the user
cache; --tool-maps FILE / tool_maps selects them; results record which maps ran and what they were fitted on."""

from __future__ import annotations

import json

import pytest
from test_agent_scripted import ScriptedBackend, agent, plan

from lmmiqa.errors import ConfigError, DataError, UnknownNameError
from lmmiqa.testing import make_image
from lmmiqa.tools import run_tool
from lmmiqa.tools.maps import ToolMap, default_map, load_map_set, save_fitted_map, save_map_set

FIT = {"dataset": "koniq10k", "labels": "/data/KonIQ-10k.csv", "split": "official:train", "n": 7058,
       "created": "2026-12-02T10:00:00+00:00"}
#: a constant map (β1 = β4 = 0, β5 = 2): whatever the raw value, normalized 2.0 — unlike any shipped map
CONSTANT_2 = ToolMap((0.0, 1.0, 0.0, 0.0, 2.0), "fitted", "refitted on koniq10k", dict(FIT), (0.0, 1000.0))
FLAGS = ("distortion_detection", "distortion_analysis", "tool_selection", "tool_execution")


@pytest.fixture()
def image():
    return make_image(128, 96, seed=2)


def _run(image, **options):
    b = ScriptedBackend({"planner": plan(flags=FLAGS)})
    return agent(b, **options).score([image])[0]


def test_a_refitted_map_in_the_user_cache_is_not_used_silently(image):
    path = save_fitted_map("sharpness", CONSTANT_2)  # what `lmmiqa tools fit --tool sharpness` leaves behind
    r = _run(image)
    t = r.details["tools"]["sharpness"]
    shipped = default_map("sharpness")
    assert t["normalized"] == pytest.approx(shipped.apply(run_tool("sharpness", image).raw))
    assert t["normalized"] != pytest.approx(2.0)
    assert t["map"]["source"] == shipped.source and r.details["tool_maps"] is None
    assert any(str(path) in n and "--tool-maps" in n for n in r.details["notes"])


@pytest.mark.parametrize("form", ["tools-fit file", "bundle", "folder"])
def test_chosen_maps_are_used_and_recorded(image, tmp_path, form):
    if form == "tools-fit file":
        chosen = tmp_path / "sharpness.json"
        chosen.write_text(json.dumps({"schema_version": 1, "tool": "sharpness", "map": CONSTANT_2.to_dict()}))
    elif form == "bundle":
        chosen = save_map_set(tmp_path / "maps.json", {"sharpness": CONSTANT_2})
    else:
        chosen = tmp_path / "maps"
        chosen.mkdir()
        (chosen / "sharpness.json").write_text(
            json.dumps({"schema_version": 1, "tool": "sharpness", "map": CONSTANT_2.to_dict()}))
    r = _run(image, tool_maps=str(chosen))
    d = r.details
    t = d["tools"]["sharpness"]
    assert t["normalized"] == pytest.approx(2.0)
    assert t["map"]["source"] == "fitted" and t["map"]["fitted_on"]["dataset"] == "koniq10k"
    assert t["map"]["fitted_on"]["split"] == "official:train" and t["map"]["fitted_on"]["n"] == 7058
    assert t["map"]["file"].endswith(".json")
    # a tool the set does not cover keeps its shipped map
    assert d["tools"]["noise"]["map"]["source"] == default_map("noise").source
    assert d["tool_maps"]["path"] == str(chosen) and len(d["tool_maps"]["sha256"]) == 64
    assert d["tool_maps"]["tools"]["sharpness"]["fitted_on"]["labels"] == "/data/KonIQ-10k.csv"
    assert d["fusion"]["q_bar"] == pytest.approx((2.0 + d["tools"]["noise"]["normalized"]) / 2)  # fused with it


def test_bad_map_files_fail_at_configuration(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        agent(ScriptedBackend(), tool_maps=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "tool": "sharpness"}')
    with pytest.raises(DataError, match="lmmiqa tools fit"):
        load_map_set(bad)
    unknown = save_map_set(tmp_path / "u.json", {"sharpnes": CONSTANT_2})
    with pytest.raises(UnknownNameError):
        load_map_set(unknown)


def test_cli_tool_maps_flag(tmp_path):
    import argparse

    from lmmiqa.cli._method_args import add_method_args, method_options

    p = argparse.ArgumentParser()
    add_method_args(p, default_method="agentic-iqa")
    chosen = save_map_set(tmp_path / "maps.json", {"sharpness": CONSTANT_2})
    args = p.parse_args(["--tool-maps", str(chosen)])
    assert method_options(args)["tool_maps"] == str(chosen)
    import lmmiqa

    scorer = lmmiqa.create_scorer("agentic-iqa", **method_options(args))
    assert scorer.describe()["tool_maps"]["tools"]["sharpness"]["source"] == "fitted"
    with pytest.raises(ConfigError, match="tool_maps"):
        lmmiqa.create_scorer("q-align", tool_maps=str(chosen))
