"""LEAF student training: artifact, determinism, exact resume, level head, transformers students, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmmiqa.distill.artifact import CALIBRATION_FILE, CONFIG_FILE, TEACHER_FILE, TRAINING_FILE, WEIGHTS_FILE  # noqa: E402
from lmmiqa.distill.teacher import TeacherConfig, teach  # noqa: E402
from lmmiqa.distill.train import STATE_DIR, TrainConfig, train_student  # noqa: E402
from lmmiqa.errors import ConfigError, DataError, ModelLoadError, UnknownNameError  # noqa: E402

TINY = {"channels": [4, 8]}


@pytest.fixture()
def cache(blur_set, tmp_path) -> Path:
    out = tmp_path / "teach"
    teach(blur_set[0].parent, out, TeacherConfig(method="cue_scorer:SharpnessTeacher", pairs=30))
    return out


def tiny_config(**kw) -> TrainConfig:
    base = {"student": "small-cnn", "student_options": TINY, "image_size": 32, "crops": 4, "batch_size": 4,
            "epochs": 2,
            "workers": 0}
    base.update(kw)
    return TrainConfig(**base)


def weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / WEIGHTS_FILE))


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_artifact_is_self_describing(cache, tmp_path):
    summary = train_student(cache, tmp_path / "s", tiny_config())
    assert summary.epochs == 2 and len(summary.history) == 2 and summary.n_pairs == 30
    cfg = json.loads((tmp_path / "s" / CONFIG_FILE).read_text())
    assert cfg["registered_name"] == "leaf" and cfg["kind"] == "lmmiqa-leaf-student" and cfg["schema_version"] == 2
    assert cfg["student"] == {"name": "small-cnn", "arch": {"channels": [4, 8], "norm": "batch", "lcn": True},
                              "k_levels": None}
    pre = cfg["preprocessing"]
    assert pre["size"] == 32 and pre["mode"] == "crops" and pre["crops"] == 4 and pre["crop_layout"] == "grid"
    assert cfg["output"]["target_std"] > 0
    teacher = json.loads((tmp_path / "s" / TEACHER_FILE).read_text())
    assert teacher["identity"]["method"] == "cue_scorer:SharpnessTeacher" and teacher["n_pairs"] == 30
    training = json.loads((tmp_path / "s" / TRAINING_FILE).read_text())
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    assert {"loss", "point", "kl", "pair", "seconds"} <= set(training["history"][0])
    assert not (tmp_path / "s" / CALIBRATION_FILE).exists()
    assert (tmp_path / "s" / STATE_DIR / "checkpoint.pt").is_file()


def test_training_is_deterministic_for_a_seed(cache, tmp_path):
    train_student(cache, tmp_path / "a", tiny_config(seed=1))
    train_student(cache, tmp_path / "b", tiny_config(seed=1))
    train_student(cache, tmp_path / "c", tiny_config(seed=2))
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert not same(weights(tmp_path / "a"), weights(tmp_path / "c"))


def test_interrupted_and_resumed_run_equals_uninterrupted_run(cache, tmp_path, monkeypatch):
    import lmmiqa.distill.train as train_mod

    train_student(cache, tmp_path / "full", tiny_config(epochs=2))
    save = train_mod._save_checkpoint

    def save_then_interrupt(path, *args):
        save(path, *args)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_student(cache, tmp_path / "resumed", tiny_config(epochs=2))
    assert not (tmp_path / "resumed" / WEIGHTS_FILE).exists()
    monkeypatch.setattr(train_mod, "_save_checkpoint", save)
    second = train_student(cache, tmp_path / "resumed", tiny_config(epochs=2))
    assert second.resumed_from_epoch == 1 and len(second.history) == 2
    assert same(weights(tmp_path / "full"), weights(tmp_path / "resumed"))
    # nothing left to do: the artifact is rewritten from the checkpoint, unchanged
    again = train_student(cache, tmp_path / "resumed", tiny_config(epochs=2))
    assert again.resumed_from_epoch == 2 and same(weights(tmp_path / "full"), weights(tmp_path / "resumed"))


def test_checkpoint_of_another_run_is_refused(cache, tmp_path):
    train_student(cache, tmp_path / "s", tiny_config(epochs=1))
    with pytest.raises(DataError, match="different run"):
        train_student(cache, tmp_path / "s", tiny_config(epochs=1, lr=0.5))
    summary = train_student(cache, tmp_path / "s", tiny_config(epochs=1, lr=0.5), restart=True)
    assert summary.resumed_from_epoch == 0


def test_validation_split_reports_fidelity(cache, tmp_path):
    summary = train_student(cache, tmp_path / "s", tiny_config(epochs=1, val_fraction=0.25))
    assert summary.n_val == 3 and summary.n_train == 9
    assert -1.0 <= summary.history[0]["val_srcc_vs_teacher"] <= 1.0


def _fake_distribution_cache(folder: Path, images: list[Path]) -> None:
    """A teacher cache with level distributions, written in the documented format."""
    folder.mkdir()
    meta = {"kind": "lmmiqa-leaf-teacher", "schema_version": 1, "identity": {"method": "fake"},
            "levels": {"keys": ["1", "2", "3"], "values": [1.0, 2.0, 3.0], "words": ["bad", "fair", "good"]}}
    (folder / "teacher.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    with (folder / "points.jsonl").open("w") as f:
        for p in images:
            probs = rng.dirichlet([1.0, 1.0, 1.0])
            f.write(json.dumps({"image": str(p), "score": float(probs @ [1, 2, 3]), "probabilities": probs.tolist(),
                                "reliability": 0.5, "error": None}) + "\n")


def test_level_head_when_the_teacher_has_distributions(blur_set, tmp_path):
    import lmmiqa

    _fake_distribution_cache(tmp_path / "teach", blur_set)
    summary = train_student(tmp_path / "teach", tmp_path / "s", tiny_config(epochs=1))
    assert summary.history[0]["kl"] > 0 and summary.n_pairs == 0
    cfg = json.loads((tmp_path / "s" / CONFIG_FILE).read_text())
    assert cfg["student"]["k_levels"] == 3 and cfg["levels"]["words"] == ["bad", "fair", "good"]
    r = lmmiqa.score(str(blur_set[0]), method="leaf", student=str(tmp_path / "s"), device="cpu")[0]
    assert r.ok and list(r.probabilities) == ["1", "2", "3"]
    assert sum(r.probabilities.values()) == pytest.approx(1.0)
    assert r.details["level_words"] == {"1": "bad", "2": "fair", "3": "good"}


def _tiny_convnext_checkpoint(folder: Path) -> Path:
    from transformers import ConvNextConfig, ConvNextImageProcessor, ConvNextModel

    torch.manual_seed(0)
    ConvNextModel(ConvNextConfig(num_stages=2, depths=[1, 1], hidden_sizes=[8, 16])).save_pretrained(folder)
    ConvNextImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(folder)
    return folder


def test_transformers_student_from_a_local_pretrained_checkpoint(cache, blur_set, tmp_path):
    import shutil

    import lmmiqa

    ckpt = _tiny_convnext_checkpoint(tmp_path / "ckpt")
    cfg = TrainConfig(student="convnext_tiny", student_model=str(ckpt), image_size=32, batch_size=4, epochs=1,
                      workers=0)
    train_student(cache, tmp_path / "s", cfg)
    art = json.loads((tmp_path / "s" / CONFIG_FILE).read_text())
    assert art["student"]["name"] == "convnext-tiny"
    assert art["student"]["arch"]["config"]["hidden_sizes"] == [8, 16]
    assert art["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and "image processor" in art["preprocessing"]["source"]
    shutil.rmtree(ckpt)  # the artifact rebuilds the network from its own config: no checkpoint, no download
    r = lmmiqa.score(str(blur_set[0]), method="leaf", student=str(tmp_path / "s"), device="cpu")[0]
    assert r.ok and r.details["student"] == "convnext-tiny"


@pytest.mark.parametrize(("name", "dim"), [("convnext-base", 1024), ("convnext-tiny", 768), ("resnet-50", 2048)])
def test_transformers_students_from_their_published_configs(name, dim):
    from lmmiqa.distill.students import get_student

    spec = get_student(name)
    arch = spec.arch(pretrained=False, source=None)
    assert arch["model_type"] in ("convnext", "resnet") and arch["source"] is None
    assert arch["config"]["hidden_sizes"][-1] == dim
    assert spec.preprocessing(size=None, pretrained=False, source=None).size == 224


def test_unreachable_pretrained_weights_name_the_offline_options(monkeypatch):
    from lmmiqa.distill.students import get_student

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="--no-pretrained"):
        get_student("resnet-50").arch(pretrained=True, source=str(Path("/nonexistent/resnet")))


def test_options_are_validated(cache, tmp_path):
    from lmmiqa.distill.students import get_student

    with pytest.raises(UnknownNameError, match="small-cnn"):
        TrainConfig(student="mobilenet")
    with pytest.raises(ConfigError, match="at least one of"):
        TrainConfig(w_point=0, w_kl=0, w_pair=0)
    with pytest.raises(ConfigError, match="valid: channels, norm, lcn"):
        get_student("small-cnn", width=2)
    with pytest.raises(ConfigError, match="valid: none"):
        get_student("resnet-50", channels=[1])
    with pytest.raises(ConfigError, match="no pretrained weights"):
        train_student(cache, tmp_path / "s", tiny_config(pretrained=True))
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)


def test_default_batch_is_small_on_small_caches_and_recorded(cache, tmp_path):
    from lmmiqa.distill.train import LARGE_BATCH, SMALL_BATCH, SMALL_CACHE_IMAGES, auto_batch_size

    assert auto_batch_size(160) == SMALL_BATCH == 8
    assert auto_batch_size(SMALL_CACHE_IMAGES - 1) == SMALL_BATCH and auto_batch_size(SMALL_CACHE_IMAGES) == LARGE_BATCH
    summary = train_student(cache, tmp_path / "s", tiny_config(batch_size=None, epochs=1))
    training = json.loads((tmp_path / "s" / TRAINING_FILE).read_text())
    # 12 images, batch 8: 2 steps per epoch (batch 32 would make 1)
    assert training["batch_size"] == 8 and training["steps_per_epoch"] == 2 and summary.n_train == 12


def test_validation_runs_about_ten_times_and_after_the_last_epoch(cache, tmp_path):
    summary = train_student(cache, tmp_path / "s", tiny_config(epochs=13, val_fraction=0.25))
    checked = [h["epoch"] for h in summary.history if "val_srcc_vs_teacher" in h]
    assert checked == [2, 4, 6, 8, 10, 12, 13]
    assert summary.fidelity["val_srcc"] == summary.history[-1]["val_srcc_vs_teacher"]


def test_in_sample_fidelity_uses_a_seeded_sample_of_at_most_fit_check_images(cache, tmp_path, monkeypatch):
    import lmmiqa.distill.train as train_mod

    monkeypatch.setattr(train_mod, "FIT_CHECK_IMAGES", 5)
    summary = train_student(cache, tmp_path / "s", tiny_config(epochs=1))
    assert summary.n_train == 12 and summary.fidelity["n_train_checked"] == 5
