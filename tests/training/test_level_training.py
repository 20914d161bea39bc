"""Level fine-tuning (Q-Align's recipe, METHODS §6) on tiny random-weight VLMs, and the quality-aware test model
(issue 22 §2): the training step, the export, resume, the frozen vision tower, the DCT patch embedding, the ladder."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from lmmiqa.errors import ConfigError
from lmmiqa.training.levels import LevelsTrainConfig, level_bins, level_targets

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Eight generated 56 px images with MOS on a 1-5 scale."""
    from lmmiqa.testing import make_image

    root = tmp_path_factory.mktemp("levels_data")
    mos = [1.2, 4.6, 2.5, 3.9, 1.8, 4.1, 3.1, 2.2]
    out = []
    for i, m in enumerate(mos):
        path = root / f"img{i}.png"
        make_image(56, 56, seed=30 + i).save(path)
        out.append((str(path), m))
    return out


def _config(model: pathlib.Path, **kw) -> LevelsTrainConfig:
    opts = dict(model=str(model), methods=("q-align", "standard-guided"), epochs=2, batch_size=4, lr=3e-3,
                tuning="full", device="cpu", decode_workers=0, progress=False, warmup_ratio=0.0, seed=0,
                local_files_only=True, max_pixels=56 * 56)
    opts.update(kw)
    return LevelsTrainConfig(**opts)


# ----------------------------------------------------------------------------------------- pure parts


def test_bins_and_targets():
    assert level_bins([1.0, 1.79, 1.8, 3.0, 5.0, 9.0], 1.0, 5.0, 5).tolist() == [0, 0, 1, 2, 4, 4]
    assert np.array_equal(level_targets(np.array([0, 4]), 5, "onehot", 0.5), np.eye(5)[[0, 4]])
    soft = level_targets(np.array([2]), 5, "soft", 0.5)[0]
    assert soft.sum() == pytest.approx(1.0) and soft.argmax() == 2
    assert soft[1] == pytest.approx(soft[3]) and soft[1] > soft[0] > 0


def test_config_validates_vision_lr():
    with pytest.raises(ConfigError, match="vision_lr must be >= 0"):
        LevelsTrainConfig(model="m", vision_lr=-1.0)
    with pytest.raises(ConfigError, match="LoRA"):
        LevelsTrainConfig(model="m", vision_lr=0.0, tuning="lora")
    with pytest.raises(ConfigError, match="unknown level method"):
        LevelsTrainConfig(model="m", methods=("q-algn",))


# ----------------------------------------------------------------------------------------- training


def test_steps_lower_the_loss_on_a_fixed_batch(tiny_model_path, pairs):
    from PIL import Image

    from lmmiqa.training.levels import LevelsHead
    from lmmiqa.training.trainer import Samples

    head = LevelsHead(_config(tiny_model_path("qwen2_5_vl")))
    train = Samples([p for p, _ in pairs], np.array([m for _, m in pairs]), [p for p, _ in pairs])
    head.setup(train, None, True, None)
    torch.manual_seed(0)
    net = head.build(device="cpu", dtype="float32", dataset={})
    images = [Image.open(p).convert("RGB") for p, _ in pairs[:4]]
    idx = np.arange(4)
    opt = torch.optim.AdamW(head.param_groups(net), weight_decay=0.0)
    losses = []
    for _ in range(4):
        loss, terms = head.loss(net, images, train, idx, None)
        assert set(terms) == {"q-align", "standard-guided"}
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.5, losses


def test_export_loads_with_the_scorers_and_resume_matches(tmp_path, tiny_model_path, pairs):
    import lmmiqa
    from lmmiqa.training.levels import train_levels

    model = tiny_model_path("qwen2_5_vl")
    full = train_levels(pairs, tmp_path / "full", _config(model))
    spec = json.loads((tmp_path / "full" / "levels.json").read_text())
    assert spec["complete"] and spec["kind"] == "levels" and spec["methods"] == ["q-align", "standard-guided"]
    assert spec["bins"] == [1.2, 4.6] and spec["tuning"] == "full" and spec["levels"] == 5
    assert set(spec["scales"]) == {"q-align", "standard-guided"}
    val = full.history[-1]["val"]
    assert val is None  # no validation split asked for
    for method, opts in (("q-align", {}), ("standard-guided", {"levels": 5})):
        res = lmmiqa.create_scorer(method, model=str(tmp_path / "full"), **opts).score([p for p, _ in pairs[:2]])
        assert all(1.0 <= r.score <= 5.0 for r in res)
    part = train_levels(pairs, tmp_path / "part", _config(model, max_steps=1, checkpoint_every=1))
    assert not part.complete and part.global_step == 1
    done = train_levels(pairs, tmp_path / "part", _config(model))
    assert done.complete and done.resumed_from == 1 and done.global_step == full.global_step == 4
    assert [h["train_loss"] for h in done.history] == pytest.approx([h["train_loss"] for h in full.history])


def test_vision_lr_zero_freezes_the_tower(tmp_path, tiny_model_path, pairs):
    from safetensors.torch import load_file

    from lmmiqa.training.levels import LevelsHead, is_vision_param, train_levels

    model = tiny_model_path("qwen2_5_vl")
    head = LevelsHead(_config(model, vision_lr=1e-4))
    torch.manual_seed(0)
    net = head.build(device="cpu", dtype="float32", dataset={})
    groups = head.param_groups(net)
    assert [g["lr"] for g in groups] == [3e-3, 1e-4]
    assert len(groups[1]["params"]) == sum(1 for n, _ in net.named_parameters() if is_vision_param(n)) > 0

    train_levels(pairs, tmp_path / "frozen", _config(model, vision_lr=0.0, epochs=1))
    before, after = load_file(str(model / "model.safetensors")), load_file(str(tmp_path / "frozen" / "model.safetensors"))
    vision = [k for k in after if is_vision_param(k)]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in after if not is_vision_param(k) and k in before)


# ----------------------------------------------------------------------------------------- the quality-aware model


def test_dct_patch_embedding_is_an_orthonormal_frozen_basis(tiny_model_path):
    import transformers

    from lmmiqa.testing import dct_patch_embedding

    model = transformers.AutoModelForImageTextToText.from_pretrained(tiny_model_path("qwen2_5_vl"))
    w = model.model.visual.patch_embed.proj.weight
    n = dct_patch_embedding(model, [0, 1, 2, 4, 6, 8, 10, 13])
    assert n == min(64, w.shape[0]) and not w.requires_grad
    lum = w[:n].sum(dim=(1, 2)).reshape(n, -1)  # every channel and frame carries 1/6 of the basis function
    assert torch.allclose(lum @ lum.T, torch.eye(n), atol=1e-5)
    assert torch.allclose(w[0, 0, 0], torch.full_like(w[0, 0, 0], 1 / 14 / 6), atol=1e-6)  # (0, 0): the mean
    with pytest.raises(ConfigError, match="0..13"):
        dct_patch_embedding(model, [0, 14])


def test_ladder_sources_crop_only_the_training_photos():
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    from lmmiqa.testing import QUALITY_RECIPE, ladder_sources

    recipe = {**QUALITY_RECIPE, "ladder": {**QUALITY_RECIPE["ladder"], "crops": 2}}
    a, b = ladder_sources(recipe), ladder_sources(recipe)
    names = [n for n, _ in a]
    assert set(QUALITY_RECIPE["held_out"]) <= set(names)
    assert all(n in QUALITY_RECIPE["held_out"] or n.rsplit("-c", 1)[1] in ("0", "1") for n in names)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(a, b))  # seeded
    assert all(im.size[0] == im.size[1] for n, im in a if n not in QUALITY_RECIPE["held_out"])
    with pytest.raises(Exception, match="held-out"):
        ladder_sources({**recipe, "held_out": ["no_such_photo"]})


@pytest.mark.slow
def test_quality_aware_vlm_sees_quality_on_held_out_photos(tmp_path, monkeypatch):
    """The full build (~3 min on 2 cores; cached by $LMMIQA_QUALITY_MODEL_CACHE): held-out SRCC with the severity
    >= 0.7 through the ordinary scorers (issue 22 §3), and the AgenticIQA letters track it too."""
    import lmmiqa
    from lmmiqa.evaluation.correlation import srcc
    from lmmiqa.testing import quality_aware_vlm, quality_ladder

    if "LMMIQA_QUALITY_MODEL_CACHE" not in __import__("os").environ:
        monkeypatch.setenv("LMMIQA_QUALITY_MODEL_CACHE", str(tmp_path / "cache"))
    folder = quality_aware_vlm()
    _, held = quality_ladder()
    paths = [p for p, _ in held]
    severity = [-int(pathlib.Path(p).stem.rsplit("__", 1)[1]) for p in paths]
    for method, opts in (("q-align", {}), ("standard-guided", {"levels": 5})):
        scores = [r.score for r in lmmiqa.create_scorer(method, model=str(folder), **opts).score(paths)]
        assert srcc(scores, severity) >= 0.7, method
    val = json.loads((folder / "training.json").read_text())["history"][-1]["val"]
    assert val["agentic_srcc"] >= 0.6


def test_leaf_pairs_target_is_the_better_image_letter_and_validation_reads_it(tiny_model_path, pairs):
    """``leaf-pairs``: with +20 on " A" (the first image is better) the pair loss is ~0 exactly when every first
    image has the higher MOS, and large when each is the lower; the validation metric reads P(first better)."""
    from PIL import Image

    from lmmiqa.distill.teacher import pair_candidates
    from lmmiqa.testing import force_token
    from lmmiqa.training.levels import LevelsHead, pair_partners
    from lmmiqa.training.trainer import Samples

    head = LevelsHead(_config(tiny_model_path("qwen2_5_vl"), methods=("leaf-pairs",)))
    paths = [p for p, _ in pairs[:4]]
    q_desc = np.array([4.0, 3.0, 2.0, 1.0])  # each image better than the next one (the last is paired with the first)
    train = Samples(paths, q_desc, paths)
    head.setup(train, None, True, None)
    net = head.build(device="cpu", dtype="float32", dataset={})
    net.eval()
    pr = head.prompters[0]
    (ids,) = head.backend.level_token_ids([pr.pair_prompt(paths[0], paths[1])], list(pair_candidates()))
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad(), force_token(net, ids[0]):
        first_better = float(head._pair_loss(net, pr, images, q_desc, None))
        first_worse = float(head._pair_loss(net, pr, images, -q_desc, None))
        # 3 of the 4 pairs have the first image better (the cyclic last pair is the other way round)
        assert first_better < first_worse
        val = Samples(paths, q_desc, paths)
        pred = head.predict(net, images, val, np.arange(4), None)
    assert pred.shape == (4, 1) and (pred[:, 0] > 0.99).all()  # " A" forced: P(first better) ~1
    m, _ = head.metrics(pred, val)
    dq = q_desc - q_desc[pair_partners(4)]
    assert m["leaf-pairs_accuracy"] == pytest.approx(float(np.mean(dq > 0)))  # right where the first is better
    with pytest.raises(ConfigError, match="leaf-pairs"):
        LevelsTrainConfig(model="m", methods=("pairs",))
