"""The LEAF teacher pass: orientation, cache files, resume, refusal of a foreign cache, MLLM pair prompts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from leaf_helpers import blur_level

from lmmiqa.distill.teacher import (
    PAIRS_FILE,
    POINTS_FILE,
    TEACHER_FILE,
    TeacherConfig,
    load_teacher_labels,
    read_jsonl,
    teach,
)
from lmmiqa.errors import ConfigError, DataError

CUE = "cue_scorer:SharpnessTeacher"


def _rows(folder: Path, name: str) -> list[dict]:
    return read_jsonl(folder / name)


def test_derived_pairs_and_negated_lower_is_better_teacher(blur_set, tmp_path):
    out = tmp_path / "teach"
    cfg = TeacherConfig(method=CUE, options={"lower_is_better": True}, pairs=20, seed=3)
    summary = teach(blur_set[0].parent, out, cfg)
    assert (summary.n_points, summary.n_pairs, summary.pair_mode, summary.negated) == (12, 20, "derived", True)
    meta = json.loads((out / TEACHER_FILE).read_text())
    assert meta["orientation"]["negated"] is True and meta["orientation"]["higher_is_better"] is True
    assert meta["counts"] == {"images": 12, "points": 12, "point_failures": 0, "pairs": 20, "pair_failures": 0}
    points = _rows(out, POINTS_FILE)
    assert len(points) == 12
    assert all(r["score"] == -r["raw_score"] and r["negated"] and r["reliability"] == 1.0 for r in points)
    # oriented: the sharp version of each content beats its strongest blur
    by_name = {Path(r["image"]).name: r["score"] for r in points}
    for i in range(3):
        assert by_name[f"img{i}_blur0.png"] > by_name[f"img{i}_blur3.png"]
    labels = load_teacher_labels(out)
    sigma = float(np.std(labels.scores))
    index = {p: k for k, p in enumerate(labels.images)}
    for r in _rows(out, PAIRS_FILE):
        assert r["source"] == "derived:thurstone" and r["reliability"] == 1.0
        d = (labels.scores[index[r["a"]]] - labels.scores[index[r["b"]]]) / (math.sqrt(2) * sigma)
        assert r["p"] == pytest.approx(0.5 * (1 + math.erf(d / math.sqrt(2))))
    assert labels.probs is None and labels.pairs.shape == (20, 2)


def test_resume_appends_only_new_judgments_and_survives_a_torn_line(blur_set, tmp_path):
    out = tmp_path / "teach"
    folder = blur_set[0].parent
    teach(folder, out, TeacherConfig(method=CUE, pairs=10))
    assert len(_rows(out, POINTS_FILE)) == 12 and len(_rows(out, PAIRS_FILE)) == 10
    with (out / PAIRS_FILE).open("a") as f:
        f.write('{"a": "/x.png", "b": "/y.p')  # an interrupted write
    summary = teach(folder, out, TeacherConfig(method=CUE, pairs=25))
    assert len(_rows(out, POINTS_FILE)) == 12  # nothing re-judged
    assert summary.n_pairs == 25 and len(_rows(out, PAIRS_FILE)) == 25
    assert (out / PAIRS_FILE).read_text().endswith("\n")
    summary = teach(folder, out, TeacherConfig(method=CUE, pairs=25))
    assert len(_rows(out, PAIRS_FILE)) == 25 and summary.n_pairs == 25


def test_refuses_a_cache_of_another_teacher_unless_restarted(blur_set, tmp_path):
    out = tmp_path / "teach"
    teach(blur_set[0].parent, out, TeacherConfig(method=CUE, pairs=4))
    with pytest.raises(DataError, match="another teacher or other settings"):
        teach(blur_set[0].parent, out, TeacherConfig(method=CUE, options={"lower_is_better": True}, pairs=4))
    summary = teach(blur_set[0].parent, out, TeacherConfig(method=CUE, options={"lower_is_better": True}, pairs=4),
                    restart=True)
    assert summary.negated and len(_rows(out, POINTS_FILE)) == 12


def test_bad_images_are_recorded_not_fatal(blur_set, tmp_path):
    (blur_set[0].parent / "broken.png").write_bytes(b"not an image")
    summary = teach(blur_set[0].parent, tmp_path / "teach", TeacherConfig(method=CUE, pairs=5))
    assert summary.n_point_failures == 1 and summary.n_points == 12
    failed = [r for r in _rows(tmp_path / "teach", POINTS_FILE) if r["error"]]
    assert len(failed) == 1 and "broken.png" in failed[0]["image"]
    assert len(load_teacher_labels(tmp_path / "teach")) == 12


def test_registered_classical_tool_teacher_is_negated(blur_set, tmp_path):
    summary = teach(blur_set[0].parent, tmp_path / "t", TeacherConfig(method="sharpness", pairs=0))
    labels = load_teacher_labels(tmp_path / "t")
    assert summary.n_pairs == 0 and len(labels.pairs) == 0
    # sharpness is higher-is-better: not negated, and blur lowers it
    assert summary.negated is False
    sharp = [s for p, s in zip(labels.images, labels.scores) if blur_level(p) == 0]
    blurred = [s for p, s in zip(labels.images, labels.scores) if blur_level(p) == 3]
    assert min(sharp) > max(blurred)


def test_options_are_validated():
    with pytest.raises(ConfigError, match="pair mode"):
        TeacherConfig(pair_mode="both")
    with pytest.raises(ConfigError, match="pairs"):
        TeacherConfig(pairs=-1)
    with pytest.raises(ConfigError, match="close_fraction"):
        TeacherConfig(close_fraction=2)
    with pytest.raises(ConfigError, match="entropy, maxprob"):
        TeacherConfig(point_reliability="margin")


def test_prompt_pairs_need_an_mllm_teacher(blur_set, tmp_path):
    with pytest.raises(ConfigError, match="needs an MLLM teacher"):
        teach(blur_set, tmp_path / "t", TeacherConfig(method=CUE, pair_mode="prompt"))


def test_in_memory_images_and_empty_inputs_are_refused(tmp_path):
    from lmmiqa.testing import make_image

    with pytest.raises(ConfigError, match="image files"):
        teach([make_image()], tmp_path / "t", TeacherConfig(method=CUE))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        teach(tmp_path / "empty", tmp_path / "t", TeacherConfig(method=CUE))


def test_load_teacher_labels_errors(tmp_path):
    with pytest.raises(DataError, match="not a teacher cache"):
        load_teacher_labels(tmp_path)
    (tmp_path / TEACHER_FILE).write_text(json.dumps({"kind": "lmmiqa-leaf-teacher", "schema_version": 99}))
    with pytest.raises(DataError, match="schema version 99"):
        load_teacher_labels(tmp_path)


def test_mllm_teacher_points_distributions_and_two_order_pairs(tiny_vlm, blur_set, tmp_path):
    import lmmiqa
    from lmmiqa.distill.teacher import pair_candidates
    from lmmiqa.testing import force_token

    scorer = lmmiqa.create_scorer("q-align", model=str(tiny_vlm), device="cpu")
    images = [p for p in blur_set if blur_level(p) in (0, 3)][:4]
    cfg = TeacherConfig(method="q-align", options={"model": str(tiny_vlm), "device": "cpu"}, pairs=3, batch_size=4)
    a_token = scorer.backend.token_ids(pair_candidates(), "The image with better quality is image")[0]
    with force_token(scorer.backend.model, a_token):  # the model always answers " A" (the first image)
        summary = teach(images, tmp_path / "t", cfg, scorer=scorer)
    assert summary.pair_mode == "prompt" and summary.n_pairs == 3
    points = _rows(tmp_path / "t", POINTS_FILE)
    assert all(len(r["probabilities"]) == 5 and 0.0 <= r["reliability"] <= 1.0 for r in points)
    for r in _rows(tmp_path / "t", PAIRS_FILE):
        assert r["source"] == "prompt"
        # pure position bias: A wins when shown first, loses when shown second -> p = 0.5, agreement ~0
        assert r["p_ab"] == pytest.approx(1.0, abs=1e-3) and r["p_ba"] == pytest.approx(0.0, abs=1e-3)
        assert r["p"] == pytest.approx(0.5, abs=1e-3) and r["reliability"] == pytest.approx(0.0, abs=2e-3)
    meta = json.loads((tmp_path / "t" / TEACHER_FILE).read_text())
    assert meta["pair_prompt"]["candidates"] == [" A", " B"] and meta["pair_prompt"]["both_orders"] is True
    assert meta["levels"]["words"] == ["bad", "poor", "fair", "good", "excellent"]
    labels = load_teacher_labels(tmp_path / "t")
    assert labels.probs.shape == (4, 5) and labels.level_values == (1.0, 2.0, 3.0, 4.0, 5.0)


def test_runtime_options_do_not_change_the_teacher_identity():
    from types import SimpleNamespace

    from lmmiqa.distill.teacher import _identity

    scorer = SimpleNamespace(name="q-align", model_name="m")
    a = _identity(TeacherConfig(options={"model": "m", "device": "cpu", "batch_size": 2}), scorer, "prompt")
    b = _identity(TeacherConfig(options={"model": "m", "device": "cuda"}), scorer, "prompt")
    c = _identity(TeacherConfig(options={"model": "m", "readout": "argmax"}), scorer, "prompt")
    assert a == b and a != c
