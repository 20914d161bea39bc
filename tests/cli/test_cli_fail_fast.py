"""A model that cannot be loaded and a bad --device/--dtype end the run once, up front (issue 15, parts 2-3)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

BACKEND_LOAD = "lmmiqa.backends.transformers_local:TransformersBackend._load"
SAM2_LOAD = "lmmiqa.segment.sam2:Sam2Segmenter._load"
SCORE_ITEMS = "lmmiqa.methods.base:Scorer._score_batch"


def _three(sample_images):
    return [str(p) for p in sample_images[:3]]


def _one_error(r) -> str:
    lines = [x for x in r.message.splitlines() if x.strip()]
    assert len(lines) == 1, r.message
    return lines[0]


@pytest.mark.parametrize("method", ["q-align", "llm-iqa"])
def test_missing_hub_model_offline_is_one_error_and_one_load(run_cli, sample_images, method):
    t0 = time.perf_counter()
    extra = ["--segmenter", "felzenszwalb"] if method == "llm-iqa" else []  # the model, not SAM 2 (next test)
    r = run_cli(["score", *_three(sample_images), "--method", method, "--model", "nobody/no-such-model",
                 "--batch-size", "2", *extra], count=[BACKEND_LOAD, SCORE_ITEMS])
    took = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    line = _one_error(r)
    assert "nobody/no-such-model" in line and "HF_HUB_OFFLINE" in line
    assert "hf download nobody/no-such-model --local-dir ./no-such-model" in line
    assert "--model ./no-such-model" in line and "model='" not in line  # CLI words on the CLI
    assert r.counts[BACKEND_LOAD] == 1  # loaded once: no reload per item
    assert r.counts[SCORE_ITEMS] == 1  # the first batch ends the run: no per-image retries, no second batch
    assert r.stdout.count("ERROR") == 0
    assert took < 60


def _count_in_process(monkeypatch, targets):
    """``{"module:Class.method": calls}`` for calls made in this process (the counting of run_cli, without a
    subprocess: used where a model is loaded, which a fresh interpreter pays a torch import for)."""
    import importlib

    counts: dict[str, int] = {}
    for path in targets:
        mod_name, _, attr = path.rpartition(":")
        cls_name, _, meth = attr.partition(".")
        owner = getattr(importlib.import_module(mod_name), cls_name)
        original = getattr(owner, meth)

        def wrapper(*a, _path=path, _original=original, **k):
            counts[_path] = counts.get(_path, 0) + 1
            return _original(*a, **k)

        monkeypatch.setattr(owner, meth, wrapper)
    return counts


class _Result:
    """What _one_error reads from a run: its stderr."""

    def __init__(self, err: str) -> None:
        self.message = err


def test_llm_iqa_missing_sam2_offline_is_one_error_and_one_load(sample_images, tiny_model_path, monkeypatch, capsys):
    from lmmiqa.cli import main

    model = str(tiny_model_path("qwen2_5_vl"))
    capsys.readouterr()  # building the tiny model (first use in a session) writes to stderr
    counts = _count_in_process(monkeypatch, [SAM2_LOAD, SCORE_ITEMS])
    rc = main(["score", *_three(sample_images), "--method", "llm-iqa", "--model", model, "--device", "cpu",
               "--batch-size", "2"])
    assert rc == 2
    line = _one_error(_Result(capsys.readouterr().err))
    assert "facebook/sam2.1-hiera-large" in line and "HF_HUB_OFFLINE" in line
    # the CLI spelling of the segmenter folder, and the weight-free fallback as a flag
    assert """--option segmenter_options='{"model": "./sam2"}'""" in line
    assert "--segmenter felzenszwalb" in line and "model='" not in line
    assert counts[SAM2_LOAD] == 1 and counts[SCORE_ITEMS] == 1


def test_unreachable_hub_fails_fast_without_retries(run_cli, sample_images):
    # online mode, but the hub endpoint refuses connections: one short probe, no from_pretrained retries
    t0 = time.perf_counter()
    r = run_cli(["score", *_three(sample_images), "--model", "nobody/no-such-model"],
                env={"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9",
                     "LMMIQA_HUB_TIMEOUT": "2"},
                count=[BACKEND_LOAD, "transformers:AutoModelForImageTextToText.from_pretrained",
                       "transformers:AutoProcessor.from_pretrained"])
    took = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    line = _one_error(r)
    assert "hub is unreachable" in line and "http://127.0.0.1:9" in line
    assert r.counts[BACKEND_LOAD] == 1
    assert "transformers:AutoProcessor.from_pretrained" not in r.counts  # never tried the network itself
    assert "transformers:AutoModelForImageTextToText.from_pretrained" not in r.counts
    assert took < 60


def test_broken_local_folder_is_run_level(sample_images, tmp_path, monkeypatch, capsys):
    from lmmiqa.cli import main

    empty = tmp_path / "not-a-model"
    empty.mkdir()
    counts = _count_in_process(monkeypatch, [BACKEND_LOAD])
    assert main(["score", *_three(sample_images), "--model", str(empty), "--batch-size", "1"]) == 2
    assert "cannot load the model from the local folder" in _one_error(_Result(capsys.readouterr().err))
    assert counts[BACKEND_LOAD] == 1  # batch size 1: three batches before, each loading the model again


def test_python_api_raises_once_in_python_words(sample_images):
    import lmmiqa
    from lmmiqa.errors import ModelLoadError

    scorer = lmmiqa.create_scorer("q-align", model="nobody/no-such-model")
    with pytest.raises(ModelLoadError) as info:
        scorer.score([str(p) for p in sample_images[:3]], batch_size=1)
    assert "model='./no-such-model'" in str(info.value) and "--model" not in str(info.value)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--device", "gpu"], "unknown device 'gpu'; did you mean 'cuda'? valid: auto, cpu, cuda, cuda:N, mps"),
        (["--dtype", "fp16"], "unknown dtype 'fp16'; did you mean 'float16'? valid: auto, float32, bfloat16, float16"),
    ],
)
def test_bad_device_or_dtype_is_one_usage_error(run_cli, sample_images, tiny_model_path, flags, expected):
    model = tiny_model_path("qwen2_5_vl")
    r = run_cli(["score", *_three(sample_images), "--model", model, *flags], count=[BACKEND_LOAD])
    assert r.returncode == 2, r.stderr
    assert expected in _one_error(r)
    assert r.counts == {}  # checked before any model is built
    assert r.stdout == ""


def test_cuda_without_gpu_is_one_usage_error(run_cli, sample_images, tiny_model_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = tiny_model_path("qwen2_5_vl")
    r = run_cli(["score", *_three(sample_images), "--model", model, "--device", "cuda"], count=[BACKEND_LOAD])
    assert r.returncode == 2, r.stderr
    assert "CUDA is not available on this machine; use --device cpu" in _one_error(r)
    assert r.counts == {} and r.stdout == ""


def test_python_bad_device_raises_once(sample_images, tiny_model_path):
    import lmmiqa
    from lmmiqa.errors import DeviceError

    scorer = lmmiqa.create_scorer("q-align", model=str(tiny_model_path("qwen2_5_vl")), device="gpu")
    with pytest.raises(DeviceError, match="did you mean 'cuda'"):
        scorer.score([str(p) for p in sample_images[:3]], batch_size=1)


def test_cached_hub_model_loads_without_network(run_cli, sample_images, tiny_model_path, tmp_path):
    # a hub id already in the Hugging Face cache, the hub unreachable, offline mode off: loaded from the cache
    # at once (local_files_only), not after the hub client's retries
    import shutil

    snapshot = tmp_path / "hub" / "models--someone--tiny-vlm" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_path("qwen2_5_vl"), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    t0 = time.perf_counter()
    r = run_cli(["score", *_three(sample_images), "--model", "someone/tiny-vlm", "--device", "cpu", "--format", "jsonl"],
                env={"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9",
                     "HF_HUB_CACHE": str(tmp_path / "hub"), "LMMIQA_HUB_TIMEOUT": "2"})
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 3 and '"model": "someone/tiny-vlm"' in r.stdout
    assert "Retrying" not in r.stderr and "127.0.0.1:9" not in r.stderr, r.stderr  # no request after the probe
    assert time.perf_counter() - t0 < 90
