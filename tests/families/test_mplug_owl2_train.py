"""``lmmiqa train q-scorer --preset paper``: Q-Scorer's official recipe (METHODS §4) on a tiny mPLUG-Owl2 in the
published layout — what trains, the loss, the prompts, the artifact and scoring it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

MOS = [1.2, 4.6, 2.5, 3.9]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    from lmmiqa.testing import make_image

    root = tmp_path_factory.mktemp("owl2_train")
    rows = []
    for i, m in enumerate(MOS):
        name = f"img{i}.png"
        make_image(48 + 8 * i, 40, seed=20 + i).save(root / name)
        rows.append((name, m))
    labels = root / "labels.csv"
    with labels.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["dis_img_path", "score"])
        wr.writerows(rows)
    return {"root": root, "labels": labels, "pairs": [(str(root / n), m) for n, m in rows]}


def test_the_paper_recipe_has_sources_and_is_overridable():
    from lmmiqa.training.q_scorer_recipes import PAPER, recipe_config

    opts = PAPER.options()
    assert (opts["lora_r"], opts["lora_alpha"], opts["lora_dropout"]) == (128, 256.0, 0.05)
    assert (opts["ce_weight"], opts["mse_weight"], opts["loss_clamp"], opts["head_target"]) == (0.05, 0.05, (0.0, 5.0),
                                                                                                  "raw")
    assert (opts["batch_size"], opts["epochs"], opts["lr"], opts["warmup_ratio"]) == (16, 3, 2e-5, 0.03)
    assert all(v.source for v in PAPER.values.values())
    assert [k for k, v in PAPER.values.items() if v.is_decision] == ["bin_range"]
    cfg = recipe_config("paper", model="x", batch_size=2)
    assert cfg.batch_size == 2 and cfg.lora_r == 128 and cfg.preset == "paper" and cfg.image_position == "after"
    from lmmiqa.training.q_scorer import QScorerTrainConfig

    default = QScorerTrainConfig(model="x")
    assert default.preset is None and default.head_target == "normalized" and default.loss_clamp is None


def test_paper_recipe_trains_what_the_official_code_trains_with_its_loss(owl2_base_folder, labelled):
    import torch

    from lmmiqa.training.q_scorer import QScorerHead, batch_loss
    from lmmiqa.training.q_scorer_recipes import recipe_config
    from lmmiqa.training.trainer import samples_from

    cfg = recipe_config("paper", model=str(owl2_base_folder), head_dims=(32, 16), device="cpu", dtype="float32",
                        decode_workers=0, progress=False, gradient_checkpointing=False)
    head = QScorerHead(cfg)
    train, hib, published, _ = samples_from(labelled["pairs"], "train")
    head.setup(train, None, hib, published)
    net = head.build(device="cpu", dtype="float32", dataset={})
    tq = head.tq
    trainable = {n for n, p in net.lm.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    # LoRA on q_proj and the visual value path only (2 layers × 2 modules × A, B)
    assert len(lora) == 8 and all(".q_proj." in n or ".v_proj.multiway.1." in n for n in lora)
    assert not any("multiway.0" in n or "k_proj" in n for n in lora)
    # the vision encoder, the abstractor and the whole LM head train; the embeddings (and their new rows) do not
    assert any("vision_model" in n and "patch_embed" in n for n in trainable)
    assert any("visual_abstractor" in n and "query_embeds" in n for n in trainable)
    assert any("lm_head" in n for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    # the score tokens do not absorb the space: '... is ▁ <scoreX>' as the official tokenizer writes it
    ids = tq.backend.processor._piece("The quality of the image is <score3>", False)
    assert ids[-2:] == [29871, tq.spec.token_ids[2]]
    # training prompts: the vicuna_v1 system prompt, the question before the image
    from lmmiqa.images import open_image
    from lmmiqa.types import Prompt

    images = [open_image(p) for p, _ in labelled["pairs"][:2]]
    rendered = tq.backend._render([Prompt.simple(tq.spec.prompt_parts(images[0]), system=tq.spec.train_system_prompt,
                                                 answer_prefix=tq.spec.answer(2))])[0][0]
    assert rendered.startswith("A chat between a curious user") and "image?\n<|image|>\nASSISTANT: The quality" in rendered
    # the loss: 0.05 · (CE + Σ_b (clamp(head_b, 0, 5) − MOS_b)² / B) on the raw MOS
    q = np.array(MOS[:2])
    loss, ce, mse = batch_loss(net, tq, images, q, cfg.ce_weight, cfg.mse_weight)
    assert float(loss.detach()) == pytest.approx(0.05 * (float(ce.detach()) + float(mse.detach())), rel=1e-5)
    with torch.no_grad():
        net.head[-1].bias.fill_(100.0)  # far above the clamp: the loss sees 5, and no gradient reaches the head
    loss2, _, mse2 = batch_loss(net, tq, images, q, cfg.ce_weight, cfg.mse_weight)
    assert float(mse2.detach()) == pytest.approx(float(np.mean((5.0 - q) ** 2)), rel=1e-5)
    loss2.backward()
    assert float(net.head[-1].bias.grad.abs().sum()) == 0.0


def test_train_q_scorer_preset_paper_runs_and_scores(owl2_base_folder, labelled, tmp_path, capsys):
    import lmmiqa
    from lmmiqa.cli import main

    out = tmp_path / "qs-paper"
    rc = main(["train", "q-scorer", "--preset", "paper", "--model", str(owl2_base_folder), "--labels",
               str(labelled["labels"]), "--root", str(labelled["root"]), "--out", str(out), "--epochs", "1",
               "--batch-size", "2", "--max-steps", "1", "--head-dims", "32,16", "--seed", "0",
               "--device", "cpu", "--dtype", "float32", "--decode-workers", "0", "--no-progress", "--format", "json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["global_step"] == 1  # one step is enough to show it runs (a rerun would resume)
    spec = json.loads((out / "qscorer.json").read_text())
    assert spec["recipe"] == "paper" and spec["image_position"] == "after" and spec["head_target"] == "raw"
    assert spec["score_clamp"] == [0.0, 5.0] and spec["token_lstrip"] is False
    assert spec["lora"]["r"] == 128 and spec["lora"]["tune_vision"] and spec["lora"]["train_lm_head"]
    training = json.loads((out / "training.json").read_text())
    assert training["config"]["preset"] == "paper" and training["config"]["ce_weight"] == 0.05
    scorer = lmmiqa.create_scorer("q-scorer", adapter=str(out), model=str(owl2_base_folder), device="cpu",
                                  dtype="float32")
    results = scorer.score([p for p, _ in labelled["pairs"][:2]])
    assert all(r.ok for r in results), [r.error for r in results]
    assert all(0.0 <= r.score <= 5.0 and r.scale == (0.0, 5.0) for r in results)
    assert results[0].details["recipe"] == "paper"
    # inference prompts: no system prompt, the question first, ending on the '▁' that predicts the score token
    from lmmiqa.images import open_image
    from lmmiqa.types import Prompt

    loaded = scorer.loaded
    spec_obj = loaded.spec
    prompt = Prompt.simple(spec_obj.prompt_parts(open_image(labelled["pairs"][0][0])),
                           answer_prefix=spec_obj.score_prefix)
    text = loaded.backend._render([prompt])[0][0]
    assert text.startswith("USER: How would you rate") and text.endswith("The quality of the image is ")
    assert int(loaded.backend.encode([prompt])["input_ids"][0, -1]) == 29871
