"""Dataset records carry their paper's evaluation resize (SPAQ: shorter side 512); eval applies and records it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmmiqa.backends.pixels import apply_resize, parse_resize
from lmmiqa.data.records import get_record
from lmmiqa.errors import ConfigError
from lmmiqa.images import ImageItem
from lmmiqa.methods.base import Scorer, ScorerConfig
from lmmiqa.testing import make_image
from lmmiqa.types import ScoreResult


class SizeScorer(Scorer):
    """Scores each image by its shorter side (so the resize shows in the scores)."""

    name = "size-test"

    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        return [
            ScoreResult(image=it.key, score=float(min(it.image.size)), method=self.name, higher_is_better=True,
                        details={"size": list(it.image.size)})
            for it in items
        ]


def _spaq(root: Path, n: int = 6) -> Path:
    (root / "SPAQ").mkdir(parents=True)
    lines = ["dis_img_path,dis_type,score"]
    for i in range(n):
        make_image(160 + 40 * i, 120 + 10 * i, seed=i).save(root / "SPAQ" / f"{i:05d}.png")
        lines.append(f"SPAQ/{i:05d}.png,authentic,{10 + 12 * i}")
    (root / "SPAQ.csv").write_text("\n".join(lines) + "\n")
    return root


def test_spaq_record_and_resize_specs() -> None:
    assert get_record("spaq").eval_resize == "shorter:512"
    assert get_record("spaq").summary()["eval_resize"] == "shorter:512"
    assert get_record("livec").eval_resize is None
    img = make_image(400, 300)
    assert apply_resize(img, "shorter:512").size == (683, 512)
    assert apply_resize(img, "longer:200").size == (200, 150)
    assert apply_resize(img, "pixels:30000").size == (200, 150)
    assert apply_resize(img, None) is img
    for bad in ("short:512", "shorter:0", "shorter", "512"):
        with pytest.raises(ConfigError, match="KIND:N"):
            parse_resize(bad)
    with pytest.raises(ConfigError, match="KIND:N"):
        ScorerConfig(input_resize="half")


def test_eval_applies_and_records_the_dataset_resize(tmp_path: Path) -> None:
    from lmmiqa.evaluation.runner import evaluate

    root = _spaq(tmp_path / "data")
    evaluate(SizeScorer(), "spaq", root=str(root), out=tmp_path / "run", n_boot=0, plot=False)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["dataset"]["resize"] == {"input_resize": "shorter:512", "source": "dataset protocol", "protocol": "shorter:512"}
    assert cfg["options"]["input_resize"] == "shorter:512"
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert {p["score"] for p in preds} == {512.0}

    evaluate(SizeScorer(), "spaq", root=str(root), out=tmp_path / "raw", n_boot=0, plot=False, dataset_resize=False)
    cfg = json.loads((tmp_path / "raw" / "config.json").read_text())
    assert cfg["dataset"]["resize"]["input_resize"] is None
    assert cfg["dataset"]["resize"]["source"] == "--no-dataset-resize"
    preds = [json.loads(x) for x in (tmp_path / "raw" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["score"] for p in preds) == [120.0, 130.0, 140.0, 150.0, 160.0, 170.0]


def test_cli_no_dataset_resize_flag(tmp_path: Path, capsys: Any) -> None:
    from lmmiqa.cli import main

    root = _spaq(tmp_path / "data")
    rc = main(["eval", "--method", "tests.evaluation.test_dataset_resize:SizeScorer", "--dataset", "spaq",
               "--root", str(root), "--out", str(tmp_path / "run"), "--n-boot", "0", "--no-plot",
               "--no-dataset-resize"])
    assert rc == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["dataset"]["resize"]["source"] == "--no-dataset-resize"
