"""The Ray engine on a local cluster (``num_cpus=2``) with a tiny model: ``lmmiqa score --engine ray`` and
``evaluate(engine="ray")`` give the local engine's results, resume the same way, and stream to the same files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from lmmiqa.cli import main
from lmmiqa.errors import ConfigError, UnknownNameError
from lmmiqa.testing import make_image

ray = pytest.importorskip("ray", reason="ray not installed (extra 'ray')")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from lmmiqa.distributed import RayConfig, ray_score, scorer_spec  # noqa: E402

SIZES = [(64, 48), (40, 72), (96, 96), (120, 56), (48, 48), (80, 60), (56, 88), (72, 40), (64, 64)]


@pytest.fixture()
def images(tmp_path: Path) -> tuple[Path, list[str]]:
    """Nine generated images and one corrupt file, with a listing file of relative paths."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = []
    for i, (w, h) in enumerate(SIZES):
        name = f"img{i}.png" if i % 2 else f"img{i}.jpg"
        make_image(w, h, i).save(folder / name)
        names.append(name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    names.insert(4, "broken.png")
    listing = folder / "listing.txt"
    listing.write_text("".join(n + "\n" for n in names))
    return listing, [str(folder / n) for n in names]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ no cluster needed


def test_nothing_to_do_starts_no_ray(tiny_model_path, images):
    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    _, paths = images
    out = list(ray_score("q-align", paths, options={"model": "x"}, skip=set(paths)))
    assert out == [] and not ray.is_initialized()


def test_bad_arguments_fail_before_ray_starts(images):
    _, paths = images
    with pytest.raises(UnknownNameError, match="q-align"):
        scorer_spec("qalgn")
    with pytest.raises(ConfigError, match="unknown option"):
        list(ray_score("q-align", paths, options={"modle": "x"}))
    with pytest.raises(ConfigError, match="in-memory"):
        list(ray_score("q-align", [make_image(8, 8, 0)], options={"model": "x"}))
    for bad in ({"actors": 0}, {"gpus_per_actor": -1}, {"cpus_per_actor": 0}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            RayConfig(**bad)


def test_cli_engine_flag_rules(images, capsys):
    listing, _ = images
    assert main(["score", f"@{listing}", "--actors", "2", "--model", "x"]) == 2
    assert "only apply with --engine ray" in capsys.readouterr().err
    assert main(["score", f"@{listing}", "--engine", "ray", "--explain-image", "x.png", "--method", "llm-iqa"]) == 2
    assert "--engine local" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ on a local cluster


@pytest.fixture(scope="module")
def ray_cluster():
    """A local two-CPU Ray instance for this module (no dashboard, no auth token written to $HOME)."""
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    # Ray Data logs at DEBUG to the root handlers: keep its dumps out of pytest's failure reports
    quiet = [logging.getLogger(n) for n in ("ray", "ray.data")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def test_the_suites_ray_listens_on_loopback_only(ray_cluster):
    # tests/conftest.py runs Ray in its single-machine mode: nothing of the test cluster is reachable from outside
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def test_cli_score_ray_equals_local_and_resumes(ray_cluster, tiny_model_path, images, tmp_path):
    listing, paths = images
    model = str(tiny_model_path("qwen2_5_vl"))
    common = ["--model", model, "--device", "cpu", "--format", "jsonl"]
    local_out = tmp_path / "local.jsonl"
    assert main(["score", f"@{listing}", "--out", str(local_out), *common]) == 0
    local = _records(local_out)
    assert [r["image"] for r in local] == paths

    ray_out = tmp_path / "ray.jsonl"
    done = [r for r in local if r["error"] is None][:3]  # an interrupted earlier run: three results already there
    ray_out.write_text("".join(json.dumps(r) + "\n" for r in done))
    rc = main(["score", f"@{listing}", "--engine", "ray", "--actors", "2", "--batch-size", "3",
               "--out", str(ray_out), *common])
    assert rc == 0
    got = _records(ray_out)
    new = got[len(done):]
    # the skipped keys were not scored again; the rest arrived in input order
    assert [r["image"] for r in new] == [p for p in paths if p not in {d["image"] for d in done}]
    by_key = {r["image"]: r for r in got}
    assert len(by_key) == len(got) == len(paths)
    for ref in local:
        r = by_key[ref["image"]]
        assert set(r) == set(ref)
        if ref["error"] is not None:
            assert r["error"] == ref["error"] and r["score"] is None
            continue
        assert r["error"] is None
        assert r["score"] == pytest.approx(ref["score"], abs=1e-5)
        assert r["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-5)
        assert r["details"]["level_words"] == ref["details"]["level_words"]
        assert (r["method"], r["model"], r["scale"]) == (ref["method"], ref["model"], ref["scale"])


def test_eval_ray_engine_resumes_a_local_run(ray_cluster, tiny_model_path, images, tmp_path):
    from lmmiqa.evaluation.runner import PREDICTIONS_FILE, evaluate

    _, paths = images
    good = [Path(p) for p in paths if not p.endswith("broken.png")]
    labels = tmp_path / "labels.csv"
    labels.write_text("dis_img_path,score\n" + "".join(f"{p.name},{1 + i * 0.5}\n" for i, p in enumerate(good)))
    model = str(tiny_model_path("qwen2_5_vl"))
    opts = {"model": model, "device": "cpu"}
    common = {"labels": labels, "root": good[0].parent, "n_boot": 0, "plot": False}

    ref_run = tmp_path / "reference"
    reference = evaluate("q-align", method_options=opts, out=ref_run, **common)  # local engine, one go
    run = tmp_path / "run"
    evaluate("q-align", method_options=opts, out=run, limit=4, **common)  # interrupted after 4 items
    assert len(_records(run / PREDICTIONS_FILE)) == 4
    report = evaluate("q-align", method_options=opts, out=run, engine="ray",
                      engine_options={"actors": 1}, **common)
    recs = _records(run / PREDICTIONS_FILE)
    assert len(recs) == len(good) and len({r["image"] for r in recs}) == len(good)
    assert report.n == reference.n == len(good)
    # Ray batches the remaining items differently (other padding), which moves float32 logits by ~1e-7: the
    # scores agree to that tolerance, not bit for bit ...
    ref_scores = {r["image"]: r["score"] for r in _records(ref_run / PREDICTIONS_FILE)}
    for r in recs:
        assert r["score"] == pytest.approx(ref_scores[r["image"]], abs=1e-5)
    assert report.srcc == pytest.approx(reference.srcc, abs=1e-9)  # ... so the ranks are the same
    # ... and the report's correlations are exactly those of the predictions the resumed run holds (a random
    # model's scores span ~1e-3, so PLCC itself would amplify the 1e-7 noise: compare it with its own inputs)
    from scipy.stats import pearsonr

    mos = {p.name: 1 + i * 0.5 for i, p in enumerate(good)}
    xs = [r["score"] for r in recs]
    ys = [mos[Path(r["image"]).name] for r in recs]
    sign = -1.0 if report.oriented.get("negated_predictions") else 1.0
    assert report.plcc == pytest.approx(sign * pearsonr(xs, ys).statistic, abs=1e-12)
