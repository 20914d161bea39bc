"""Q-Scorer (METHODS §4) on tiny random-weight VLMs: score tokens, what trains, the loss, save/load/merge, resume, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest

from lmmiqa.errors import ConfigError
from lmmiqa.training.q_scorer_model import (
    HeadConfig,
    LoraSettings,
    bin_centers,
    denormalize,
    mos_bins,
    normalize_mos,
    score_tokens,
)

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

SMALL_HEAD = (32, 16)


def _config(model: pathlib.Path, **kw):
    from lmmiqa.training.q_scorer import QScorerTrainConfig

    opts = dict(model=str(model), tokens=5, epochs=2, batch_size=4, lr=5e-3, head_dims=SMALL_HEAD, device="cpu",
                decode_workers=0, progress=False, warmup_ratio=0.0, seed=0)
    opts.update(kw)
    return QScorerTrainConfig(**opts)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Eight generated images of mixed sizes with MOS on a 1-5 scale, as pairs and as a label CSV."""
    from lmmiqa.testing import make_image

    root = tmp_path_factory.mktemp("qs_data")
    sizes = [(48, 48), (64, 48), (40, 56), (56, 56), (48, 40), (72, 48), (48, 64), (60, 60)]
    mos = [1.2, 4.6, 2.5, 3.9, 1.8, 4.1, 3.1, 2.2]
    rows = []
    for i, ((w, h), m) in enumerate(zip(sizes, mos)):
        name = f"img{i}.png"
        make_image(w, h, seed=10 + i).save(root / name)
        rows.append((name, m))
    labels = root / "labels.csv"
    with labels.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["dis_img_path", "score"])
        wr.writerows(rows)
    pairs = [(str(root / n), m) for n, m in rows]
    return {"root": root, "labels": labels, "pairs": pairs}


@pytest.fixture(scope="module")
def trained_k5(tmp_path_factory, tiny_model_path, labelled):
    """A k = 5 adapter trained 3 epochs on six images, validated on two."""
    from lmmiqa.training.q_scorer import train_q_scorer

    out = tmp_path_factory.mktemp("qs_k5") / "adapter"
    cfg = _config(tiny_model_path("qwen2_5_vl"), epochs=3, val_fraction=0.25, mos_range=(1.0, 5.0))
    result = train_q_scorer(labelled["pairs"], out, cfg)
    return result, cfg


# ----------------------------------------------------------------------------------------- pure parts


def test_bins_and_normalization():
    assert score_tokens(1) == ("<score>",)
    assert score_tokens(5) == ("<score1>", "<score2>", "<score3>", "<score4>", "<score5>")
    np.testing.assert_array_equal(mos_bins([1.0, 1.79, 1.8, 3.0, 4.99, 5.0, 0.0, 7.0], 1, 5, 5), [0, 0, 1, 2, 4, 4, 0, 4])
    np.testing.assert_array_equal(mos_bins([3.0, 100.0], 1, 100, 1), [0, 0])
    np.testing.assert_allclose(bin_centers(0, 100, 5), [10, 30, 50, 70, 90])
    u = normalize_mos([1.0, 3.0, 5.0, 6.0], 1, 5)
    np.testing.assert_allclose(u, [0, 0.5, 1, 1.25])
    np.testing.assert_allclose(denormalize(u, 1, 5), [1, 3, 5, 6])
    with pytest.raises(ConfigError, match="tokens must be one of"):
        score_tokens(3)
    with pytest.raises(ConfigError, match="LO < HI"):
        mos_bins([1.0], 5, 1, 5)


def test_configs_validate():
    from lmmiqa.methods.q_scorer import QScorerConfig
    from lmmiqa.training.q_scorer import QScorerTrainConfig, _micro_batches

    with pytest.raises(ConfigError, match="tokens"):
        QScorerTrainConfig(tokens=3)
    with pytest.raises(ConfigError, match="activation"):
        HeadConfig(activation="softmax")
    with pytest.raises(ConfigError, match="regular expression"):
        LoraSettings(target="(")
    with pytest.raises(ConfigError, match="device"):
        QScorerTrainConfig(device="cuda:1")
    with pytest.raises(ConfigError, match="not both 0"):
        QScorerTrainConfig(ce_weight=0, mse_weight=0)
    with pytest.raises(ConfigError, match="--adapter"):
        QScorerConfig()
    assert QScorerTrainConfig(batch_size=3).eval_batch_size == 6
    # sharding: every process gets full batches, the union covers every item
    order = np.arange(10)
    parts = [_micro_batches(order, 2, 3, r) for r in range(3)]
    assert all(len(b) == 2 for p in parts for b in p)
    assert set(np.concatenate([np.concatenate(p) for p in parts])) == set(range(10))
    assert [len(b) for b in _micro_batches(order, 4, 1, 0)] == [4, 4, 2]


def test_cli_split_shorthand_and_head_dims():
    from lmmiqa.cli.train import _head_dims
    from lmmiqa.data.splits import parse_split

    assert str(parse_split("train")) == "official:train"  # the issue's `--split train`
    assert str(parse_split("seed:0:train")) == "seed:0:train"
    assert _head_dims("2048,1024") == (2048, 1024)
    assert _head_dims("none") == ()


# ----------------------------------------------------------------------------------------- model surgery


def test_score_tokens_get_mean_rows_and_tokenize_as_one_piece(tiny_model_path):
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig
    from lmmiqa.training.q_scorer_model import add_score_tokens

    be = TransformersBackend(TransformersConfig(model=str(tiny_model_path("qwen2_5_vl")), device="cpu", dtype="float32"))
    w_in = be.model.get_input_embeddings().weight.detach().clone()
    w_out = be.model.get_output_embeddings().weight.detach().clone()
    ids, n_before = add_score_tokens(be.tokenizer, be.model, 5)
    assert n_before == w_in.shape[0] and ids == list(range(n_before, n_before + 5))
    new_in = be.model.get_input_embeddings().weight
    new_out = be.model.get_output_embeddings().weight
    for i in ids:
        torch.testing.assert_close(new_in[i], w_in.mean(0), rtol=0, atol=1e-7)
        torch.testing.assert_close(new_out[i], w_out.mean(0), rtol=0, atol=1e-7)
    torch.testing.assert_close(new_in[:n_before], w_in, rtol=0, atol=0)
    # "is <score3>" -> the prefix's tokens then the score token: the space is absorbed (lstrip)
    prefix = be.tokenizer.encode("The quality of the image is", add_special_tokens=False)
    full = be.tokenizer.encode("The quality of the image is <score3>", add_special_tokens=False)
    assert full == [*prefix, ids[2]]
    with pytest.raises(ConfigError, match="already has"):
        add_score_tokens(be.tokenizer, be.model, 5)


def _backend_step(model: pathlib.Path, labelled, **cfg_kw):
    """build_trainable + one batch_loss/backward/AdamW step, as train_q_scorer does it."""
    from lmmiqa.images import load_input
    from lmmiqa.training.q_scorer import batch_loss, build_trainable

    torch.manual_seed(0)
    cfg = _config(model, **cfg_kw)
    tq = build_trainable(cfg, device="cpu", dtype="float32", mos_range=(1.0, 5.0), head_bias=0.5)
    before = {n: p.detach().clone() for n, p in tq.net.named_parameters()}
    images = [load_input(p) for p, _ in labelled["pairs"][:4]]
    quality = [m for _, m in labelled["pairs"][:4]]
    loss, ce, mse = batch_loss(tq.net, tq, images, quality, cfg.ce_weight, cfg.mse_weight)
    loss.backward()
    opt = torch.optim.AdamW([p for p in tq.net.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    return tq, before, (loss, ce, mse)


def test_gradients_reach_only_lora_score_rows_and_head(tiny_model_path, labelled):
    tq, before, (loss, ce, mse) = _backend_step(tiny_model_path("qwen2_5_vl"), labelled)
    assert float(ce.detach()) > 0 and float(mse.detach()) >= 0 and torch.isfinite(loss.detach())
    trainable = {n for n, p in tq.net.named_parameters() if p.requires_grad}
    kinds = {("lora_" if "lora_" in n else "token" if "trainable_tokens_delta" in n else "head" if n.startswith("head.") else n)
             for n in trainable}
    assert kinds == {"lora_", "token", "head"}
    assert all(".language_model." in n for n in trainable if "lora_" in n)
    # input and output score rows are both trainable (untied model), each one [5, hidden] tensor
    deltas = [n for n in trainable if "trainable_tokens_delta" in n]
    assert len(deltas) == 2 and any("lm_head" in n for n in deltas)
    for n, p in tq.net.named_parameters():
        if n in trainable:
            assert p.grad is not None, n
            assert p.dtype == torch.float32
        else:
            assert p.grad is None, n
            assert torch.equal(p, before[n]), f"frozen weight changed: {n}"
    changed = {n for n in trainable if not torch.equal(dict(tq.net.named_parameters())[n], before[n])}
    assert any("lora_B" in n for n in changed) and any("head." in n for n in changed)
    assert all(n in changed for n in deltas)
    assert not any(".visual." in n for n in trainable)  # the vision tower stays frozen


def test_tune_projector_trains_the_merger_only(tiny_model_path):
    from lmmiqa.training.q_scorer import build_trainable

    cfg = _config(tiny_model_path("qwen2_5_vl"), tune_projector=True)
    tq = build_trainable(cfg, device="cpu", dtype="float32", mos_range=(1.0, 5.0))
    vis = {n for n, p in tq.net.named_parameters() if p.requires_grad and ".visual." in n}
    assert vis and all(".merger." in n for n in vis)


def test_tied_embeddings_share_one_trainable_row_set_and_reload(tmp_path, tiny_model_path, labelled):
    from transformers import AutoModelForImageTextToText

    from lmmiqa.backends.hf_processor import load_processor
    from lmmiqa.images import load_input
    from lmmiqa.training.q_scorer_model import embeddings_tied, load_q_scorer, predict, save_adapter

    src = tiny_model_path("qwen2_5_vl")
    model = AutoModelForImageTextToText.from_pretrained(src)
    model.config.tie_word_embeddings = True
    model.config.get_text_config().tie_word_embeddings = True
    model.tie_weights()
    tied = tmp_path / "tied"
    model.save_pretrained(tied)
    load_processor(src).save_pretrained(tied)

    tq, _, _ = _backend_step(tied, labelled)
    base = tq.net.lm.get_base_model()
    assert embeddings_tied(base)
    deltas = [n for n, p in tq.net.named_parameters() if p.requires_grad and "trainable_tokens_delta" in n]
    assert len(deltas) == 1  # one shared set of rows for the input embedding and the LM head
    tq.net.eval()
    images = [load_input(p) for p, _ in labelled["pairs"][:3]]
    ref = predict(tq.net, tq.backend, images, tq.spec, batch_size=3)
    out = save_adapter(tmp_path / "adapter", tq.net.lm, tq.net.head, tq.spec)
    loaded = load_q_scorer(out, device="cpu", dtype="float32")
    got = predict(loaded.net, loaded.backend, images, loaded.spec, batch_size=3)
    np.testing.assert_array_equal(got.head_norm, ref.head_norm)
    np.testing.assert_array_equal(got.token_logprobs, ref.token_logprobs)


# ----------------------------------------------------------------------------------------- training


def test_training_lowers_the_loss_and_reload_reproduces_scores_exactly(trained_k5, labelled):
    from lmmiqa.methods.q_scorer import QScorer

    result, cfg = trained_k5
    assert result.complete and result.global_step == 3 * 2  # 6 training images, batch 4
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert all(h["val"]["n"] == 2 and np.isfinite(h["val"]["rmse"]) for h in result.history)
    files = {p.name for p in result.out.iterdir()}
    assert {"qscorer.json", "head.safetensors", "adapter_model.safetensors", "adapter_config.json", "training.json"} <= files
    assert "checkpoints" not in files  # removed once training completed
    spec = json.loads((result.out / "qscorer.json").read_text())
    assert spec["registered_name"] == "q-scorer" and spec["schema_version"] == 1 and spec["k"] == 5
    assert spec["mos_range"] == [1.0, 5.0] and spec["base_model"] == cfg.model
    # score-token bins over the training split's MOS min-max (Q-Align), not the 1-5 range (issue 13 §2)
    val_paths = set(result.val_predictions["paths"])
    train_mos = [m for p, m in labelled["pairs"] if p not in val_paths]
    assert spec["bin_range"] == [min(train_mos), max(train_mos)] and spec["bin_source"] == "training min-max"

    scorer = QScorer.from_options(adapter=str(result.out), device="cpu", batch_size=cfg.eval_batch_size)
    paths = result.val_predictions["paths"]
    res = scorer.score(paths)
    assert all(r.ok for r in res)
    np.testing.assert_array_equal([r.details["head_raw"] for r in res], result.val_predictions["mos_pred"])
    for r in res:
        assert r.method == "q-scorer" and r.scale == (1.0, 5.0) and r.higher_is_better
        assert 1.0 <= r.score <= 5.0 and r.score == min(max(r.details["head_raw"], 1.0), 5.0)
        assert list(r.probabilities) == ["1", "2", "3", "4", "5"]
        assert abs(sum(r.probabilities.values()) - 1) < 1e-9
        assert r.details["level_words"]["3"] == "<score3>" and 0 < r.details["covered_mass"] <= 1
        assert 1.0 <= r.details["token_mos"] <= 5.0
        assert r.details["bin_range"] == spec["bin_range"]
        assert r.details["image_tokens"] > 0 and r.details["prompt_tokens"] > r.details["image_tokens"]
        centres = bin_centers(*spec["bin_range"], 5)  # the bins the tokens were trained on
        assert r.details["token_mos"] == pytest.approx(float(np.dot(list(r.probabilities.values()), centres)))
    # batching does not change results beyond float noise
    single = scorer.score(paths, batch_size=1)
    np.testing.assert_allclose([r.details["head_raw"] for r in single], result.val_predictions["mos_pred"], atol=1e-5)


def test_merged_export_scores_like_the_adapter(trained_k5, tmp_path, labelled):
    from lmmiqa.methods.q_scorer import QScorer
    from lmmiqa.training.q_scorer_model import export_merged, read_spec

    result, _ = trained_k5
    merged = export_merged(result.out, tmp_path / "merged")
    spec = read_spec(merged)
    assert spec.merged and spec.k == 5 and (merged / "config.json").is_file()
    paths = [p for p, _ in labelled["pairs"]]
    ref = QScorer.from_options(adapter=str(result.out), device="cpu").score(paths)
    for opts in ({"adapter": str(merged)}, {"model": str(merged)}):
        got = QScorer.from_options(device="cpu", **opts).score(paths)
        for a, b in zip(ref, got):
            assert abs(a.details["head_raw"] - b.details["head_raw"]) < 1e-5
            for key in a.probabilities:
                assert abs(a.probabilities[key] - b.probabilities[key]) < 1e-5
    with pytest.raises(ConfigError, match="not empty"):
        export_merged(result.out, merged)


def test_k1_on_qwen3_vl(tmp_path, tiny_model_path, labelled):
    from lmmiqa.methods.q_scorer import QScorer
    from lmmiqa.training.q_scorer import train_q_scorer

    result = train_q_scorer(labelled["pairs"], tmp_path / "k1",
                            _config(tiny_model_path("qwen3_vl"), tokens=1, epochs=1, mos_range=(1.0, 5.0)))
    assert result.complete and result.global_step == 2
    res = QScorer.from_options(adapter=str(result.out), device="cpu").score([p for p, _ in labelled["pairs"][:3]])
    for r in res:
        assert r.ok and r.probabilities is None and r.details["k"] == 1
        assert 0 < r.details["score_token_prob"] <= 1 and 1.0 <= r.score <= 5.0


def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_path, labelled):
    from safetensors.torch import load_file

    from lmmiqa.training.q_scorer import train_q_scorer

    model = tiny_model_path("qwen2_5_vl")
    pairs = labelled["pairs"]
    full = train_q_scorer(pairs, tmp_path / "full", _config(model, mos_range=(1.0, 5.0), lora_dropout=0.1))
    part = train_q_scorer(pairs, tmp_path / "part",
                          _config(model, mos_range=(1.0, 5.0), lora_dropout=0.1, max_steps=3, checkpoint_every=1))
    assert not part.complete and part.global_step == 3
    assert (tmp_path / "part" / "checkpoints" / "LATEST").is_file()
    # a checkpoint written by another number of processes is refused (its batch layout differs)
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "part", other)
    state = next((other / "checkpoints").glob("step-*")) / "state.json"
    state.write_text(state.read_text().replace('"world_size": 1', '"world_size": 2'))
    with pytest.raises(ConfigError, match="2 process"):
        train_q_scorer(pairs, other, _config(model, mos_range=(1.0, 5.0), lora_dropout=0.1))
    done = train_q_scorer(pairs, tmp_path / "part", _config(model, mos_range=(1.0, 5.0), lora_dropout=0.1))
    assert done.complete and done.resumed_from == 3 and done.global_step == full.global_step == 4
    for name in ("adapter_model.safetensors", "head.safetensors"):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(tmp_path / "part" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert [h["train_loss"] for h in done.history] == [h["train_loss"] for h in full.history]
    # the same command again has nothing to do; other options need --overwrite
    again = train_q_scorer(pairs, tmp_path / "full", _config(model, mos_range=(1.0, 5.0), lora_dropout=0.1))
    assert again.complete and again.history == full.history
    with pytest.raises(ConfigError, match="overwrite"):
        train_q_scorer(pairs, tmp_path / "full", _config(model, mos_range=(1.0, 5.0), lr=1e-3))


# ----------------------------------------------------------------------------------------- CLI


def test_cli_train_score_eval_export(tmp_path, tiny_model_path, labelled, capsys):
    from lmmiqa.cli import main

    model = str(tiny_model_path("qwen2_5_vl"))
    root, labels = str(labelled["root"]), str(labelled["labels"])
    out = tmp_path / "adapter"
    rc = main(["train", "q-scorer", "--model", model, "--labels", labels, "--root", root, "--lower-better",
               "--score-range", "1", "5", "--bin-range", "1", "4.6", "--tokens", "5", "--epochs", "1", "--batch-size", "4", "--head-dims", "16",
               "--val-fraction", "0.25", "--device", "cpu", "--decode-workers", "0", "--no-progress",
               "--format", "json", "--out", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] and summary["last_epoch"]["val"]["n"] == 2
    spec = json.loads((out / "qscorer.json").read_text())
    assert spec["source_higher_is_better"] is False and spec["head"]["dims"] == [16]
    # a fixed bin range in the labels' (DMOS) units, flipped with them onto higher-is-better
    assert spec["bin_range"] == pytest.approx([1.4, 5.0]) and spec["bin_source"] == "fixed"
    assert summary["bin_range"] == spec["bin_range"] and summary["bin_source"] == "fixed"

    rc = main(["score", root, "--method", "q-scorer", "--adapter", str(out), "--device", "cpu", "--format", "json"])
    assert rc == 0
    arr = json.loads(capsys.readouterr().out)
    assert len(arr) == 8 and all(d["error"] is None and 1 <= d["score"] <= 5 for d in arr)
    assert all(d["higher_is_better"] and d["method"] == "q-scorer" for d in arr)

    run = tmp_path / "run"
    rc = main(["eval", "--method", "q-scorer", "--adapter", str(out), "--labels", labels, "--root", root,
               "--lower-better", "--device", "cpu", "--out", str(run), "--n-boot", "0", "--no-plot"])
    assert rc == 0 and (run / "report.json").is_file()
    capsys.readouterr()

    merged = tmp_path / "merged"
    assert main(["export", "q-scorer", str(out), "--merged", str(merged)]) == 0
    assert "merged q-scorer written" in capsys.readouterr().out
    rc = main(["score", labelled["pairs"][0][0], "--method", "q-scorer", "--model", str(merged), "--device", "cpu",
               "--format", "json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)[0]
    assert d["error"] is None and abs(d["score"] - arr[0]["score"]) < 1e-5


def test_cli_train_help_documents_every_option(capsys):
    from lmmiqa.cli import main
    from lmmiqa.training.q_scorer import QScorerTrainConfig

    with pytest.raises(SystemExit) as e:
        main(["train", "q-scorer", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    flags = {"mos_range": "--score-range"}
    for f in dataclasses.fields(QScorerTrainConfig):
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        if f.name == "local_files_only":
            continue  # from HF_HUB_OFFLINE
        assert flag in text, f"{f.name} has no flag {flag} in --help"
    for flag in ("--out", "--overwrite", "--dataset", "--labels", "--root", "--split", "--val-split", "--format"):
        assert flag in text
    with pytest.raises(SystemExit):
        main(["export", "q-scorer", "--help"])
    assert "--merged" in capsys.readouterr().out


def test_pixel_budget_reaches_the_q_scorer_backend(trained_k5):
    from lmmiqa.errors import ConfigError
    from lmmiqa.methods.q_scorer import QScorer

    result, _ = trained_k5
    scorer = QScorer.from_options(adapter=str(result.out), device="cpu", max_pixels=28 * 28 * 4, max_batch_tokens=0)
    backend = scorer.loaded.backend
    assert backend.config.max_pixels == 28 * 28 * 4 and backend.config.max_batch_tokens == 0
    with pytest.raises(ConfigError, match="max_pixels"):
        QScorer.from_options(adapter=str(result.out), max_pixels="lots")
