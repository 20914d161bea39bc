"""Every no-reference tool is also a scoring method (lmmiqa.methods.classical)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import lmmiqa
from lmmiqa import registry
from lmmiqa.cli import main
from lmmiqa.errors import ConfigError
from lmmiqa.methods.classical import ToolScorer
from lmmiqa.tools import NR, get_tool

NR_TOOLS = [n for n in registry.names("tool") if get_tool(n).kind == NR]


def test_every_nr_tool_is_a_registered_method():
    for name in NR_TOOLS:
        assert registry.METHODS[name] == f"lmmiqa.methods.classical:{type(get_tool(name)).__name__}"
        cls = registry.resolve("method", name)
        assert issubclass(cls, ToolScorer) and cls.name == name
        assert cls.higher_is_better == get_tool(name).higher_is_better, name
        assert cls.summary
    for name in ("psnr", "ssim", "ms_ssim", "gmsd"):
        assert name not in registry.METHODS


@pytest.mark.parametrize("name", NR_TOOLS)
def test_method_scores_raw_value_with_normalized_details(name, make_rgb):
    img = make_rgb(seed=3, h=200, w=200)
    (r,) = lmmiqa.score(img, method=name)
    assert r.ok, r.error
    tool = get_tool(name)
    assert r.score == pytest.approx(tool.compute(img))
    assert r.method == name and r.higher_is_better == tool.higher_is_better and r.model is None
    assert r.scale == tool.bounds
    d = r.details
    assert d["tool"] == name and d["kind"] == "nr" and d["higher_is_better"] == tool.higher_is_better
    assert d["normalized"] == pytest.approx(tool.normalize(r.score)) and 1 <= d["normalized"] <= 5
    assert d["map"] in ("paper", "synthetic")
    json.dumps(r.to_dict())


def test_bad_items_do_not_sink_the_batch(images_dir, tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((50, 50, 3), dtype=np.uint8)).save(small)
    inputs = [str(images_dir / "rated" / "baboon.png"), str(tmp_path / "missing.png"), str(small)]
    results = lmmiqa.score(inputs, method="niqe", workers=2)
    assert [r.image for r in results] == inputs
    assert results[0].score == pytest.approx(5.74964, abs=1e-5)  # rgb2gray (published 5.72957 is on Y)
    assert "not found" in results[1].error
    assert "96×96" in results[2].error and results[2].higher_is_better is False


def test_tool_options_pass_through_and_are_checked(images_dir):
    scorer = lmmiqa.create_scorer("niqe", channel="gray", batch_size=2)
    assert scorer.tool.config.channel == "gray" and scorer.config.batch_size == 2
    (r,) = scorer.score(str(images_dir / "rated" / "baboon.png"))
    assert r.details["channel"] == "gray"
    with pytest.raises(ConfigError, match="valid: .*channel"):
        lmmiqa.create_scorer("niqe", chanel="gray")
    with pytest.raises(ConfigError, match="workers"):
        lmmiqa.create_scorer("piqe", workers=-1)


def test_score_cli_with_a_classical_method(images_dir, capsys):
    path = str(images_dir / "rated" / "I01.BMP")
    assert main(["score", path, "--method", "brisque", "--format", "jsonl"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["method"] == "brisque" and row["score"] == pytest.approx(10.2594, abs=1e-4)
    assert row["higher_is_better"] is False and 1 <= row["details"]["normalized"] <= 5
