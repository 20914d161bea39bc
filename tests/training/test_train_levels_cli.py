"""``lmmiqa train levels`` (Q-Align's level recipe for any method's levels, issue 22 §1) as users run it: trains,
stops at --max-steps and resumes, reports each trained method's validation SRCC/PLCC, writes a merged folder that
``lmmiqa score --model`` loads; bad input fails with the valid choices."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Eight generated images with MOS on a 1-5 scale, as a label CSV."""
    from lmmiqa.testing import make_image

    root = tmp_path_factory.mktemp("levels_data")
    mos = [1.2, 4.6, 2.5, 3.9, 1.8, 4.1, 3.1, 2.2]
    rows = []
    for i, m in enumerate(mos):
        name = f"img{i}.png"
        make_image(48 + 4 * i, 48, seed=30 + i).save(root / name)
        rows.append((name, m))
    labels = root / "labels.csv"
    with labels.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["dis_img_path", "score"])
        wr.writerows(rows)
    return {"root": root, "labels": labels, "paths": [str(root / n) for n, _ in rows]}


def _args(model, labelled, out, *extra):
    return ["train", "levels", "--model", str(model), "--labels", str(labelled["labels"]), "--root",
            str(labelled["root"]), "--score-range", "1", "5", "--epochs", "2", "--batch-size", "3", "--lr", "1e-3",
            "--val-fraction", "0.25", "--device", "cpu", "--decode-workers", "0", "--no-progress", "--format", "json",
            "--out", str(out), *extra]


def test_train_levels_stops_resumes_reports_and_exports_a_model_that_scores(tmp_path, tiny_model_path, labelled,
                                                                            capsys):
    from lmmiqa.cli import main

    model = tiny_model_path("qwen2_5_vl")
    out = tmp_path / "levels-model"
    methods = ["--methods", "q-align", "standard-guided", "agentic"]
    assert main(_args(model, labelled, out, *methods, "--max-steps", "1")) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["complete"] is False and first["global_step"] == 1
    assert (out / "checkpoints").is_dir()

    assert main(_args(model, labelled, out, *methods)) == 0  # the same command resumes
    done = json.loads(capsys.readouterr().out)
    assert done["complete"] is True and done["resumed_from"] == 1
    assert done["global_step"] == 4  # 6 training images / batch 3 = 2 steps per epoch, 2 epochs
    assert done["methods"] == ["q-align", "standard-guided", "agentic"] and done["tuning"] == "full"
    val = done["last_epoch"]["val"]
    assert val["n"] == 2
    for m in ("q-align", "standard-guided", "agentic"):
        assert f"{m}_srcc" in val and f"{m}_plcc" in val
    spec = json.loads((out / "levels.json").read_text())
    lo, hi = spec["bins"]  # the training split's MOS min-max (Q-Align): inside the labels' range
    assert spec["complete"] is True and 1.2 <= lo < hi <= 4.6 and done["bins"] == spec["bins"]
    assert spec["scales"]["standard-guided"]["tokens"] == ["1", "2", "3", "4", "5"]
    assert not (out / "checkpoints").exists()  # removed once complete (--keep-checkpoints keeps them)

    # the merged folder is an ordinary model: every method it was trained for scores with --model
    for method in ("q-align", "standard-guided"):
        rc = main(["score", *labelled["paths"][:3], "--method", method, "--model", str(out), "--device", "cpu",
                   "--format", "json"])
        assert rc == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["error"] for r in rows] == [None] * 3
        assert all(1.0 <= r["score"] <= 5.0 for r in rows)


def test_train_levels_text_summary_names_each_methods_validation(tmp_path, tiny_model_path, labelled, capsys):
    from lmmiqa.cli import main

    args = _args(tiny_model_path("qwen2_5_vl"), labelled, tmp_path / "m", "--methods", "q-align", "--epochs", "1")
    args[args.index("--format") + 1] = "text"
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "level-trained model written to" in text and "complete" in text and "full fine-tuning" in text
    assert "validation (n=2): q-align SRCC" in text


def test_real_tokenizer_levels_are_single_tokens_and_train(tmp_path, real_file_model, labelled):
    """The real Qwen2.5-VL tokenizer and chat template: the words, digits, letters and the pair prompt's A/B are
    single tokens at each method's answer position, and one step of every method's loss runs."""
    from lmmiqa.training.levels import LevelsTrainConfig, train_levels

    model = real_file_model("Qwen2.5-VL-7B-Instruct")
    pairs = list(zip(labelled["paths"][:4], [1.2, 4.6, 2.5, 3.9]))
    cfg = LevelsTrainConfig(model=str(model), methods=("q-align", "standard-guided", "agentic", "leaf-pairs"), levels=7,
                            epochs=1, batch_size=4, device="cpu", decode_workers=0, progress=False,
                            max_pixels=56 * 56)
    result = train_levels(pairs, tmp_path / "real", cfg)
    assert result.global_step == 1 and result.complete
    entry = result.history[-1]
    for m in ("q-align", "standard-guided", "agentic", "leaf-pairs"):  # cross-entropy over the vocabulary: > 0
        assert 0.0 < entry[f"train_{m}"] < 100.0
    spec = json.loads((tmp_path / "real" / "levels.json").read_text())
    assert spec["scales"]["standard-guided"]["tokens"] == [str(i) for i in range(1, 8)]
    assert spec["scales"]["agentic"]["tokens"] == ["E", "D", "C", "B", "A"]
    assert spec["scales"]["q-align"]["tokens"] == ["bad", "poor", "fair", "good", "excellent"]
    assert spec["scales"]["leaf-pairs"]["tokens"] == ["A", "B"]


def test_bad_input_fails_with_the_valid_choices(tmp_path, tiny_model_path, labelled, capsys):
    from lmmiqa.cli import main
    from lmmiqa.errors import ConfigError
    from lmmiqa.training.levels import LevelsTrainConfig

    with pytest.raises(SystemExit) as e:
        main(_args(tiny_model_path("qwen2_5_vl"), labelled, tmp_path / "x", "--methods", "q-scorer"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "q-align" in err and "standard-guided" in err and "agentic" in err
    with pytest.raises(ConfigError, match="known: q-align, standard-guided, agentic"):
        LevelsTrainConfig(model="m", methods=("q-align", "llm-iqa"))
    with pytest.raises(ConfigError, match="listed twice"):
        LevelsTrainConfig(model="m", methods=("q-align", "q-align"))


def test_help_documents_every_option(capsys):
    from lmmiqa.cli import main
    from lmmiqa.training.levels import LevelsTrainConfig

    with pytest.raises(SystemExit) as e:
        main(["train", "levels", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(LevelsTrainConfig):
        if f.name == "local_files_only":
            continue  # from HF_HUB_OFFLINE
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, f"{f.name} has no flag {flag} in --help"
    assert "Q-Align" in text


def test_lora_tuning_exports_a_merged_model_without_adapter_weights(tmp_path, tiny_model_path, labelled):
    """``--tuning lora``: the adapter is merged into the exported weights (no LoRA tensors left), and the merged
    model scores differently from its base (the update is in the weights, not lost in the merge)."""
    from safetensors import safe_open

    import lmmiqa
    from lmmiqa.training.levels import LevelsTrainConfig, train_levels

    base = tiny_model_path("qwen2_5_vl")
    pairs = list(zip(labelled["paths"][:6], [1.0, 2.0, 3.0, 4.0, 5.0, 2.5]))
    cfg = LevelsTrainConfig(model=str(base), methods=("q-align",), tuning="lora", epochs=2, batch_size=3, lr=1e-2,
                            device="cpu", decode_workers=0, progress=False)
    out = tmp_path / "lora"
    train_levels(pairs, out, cfg)
    assert json.loads((out / "levels.json").read_text())["tuning"] == "lora"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and not [n for n in names if "lora" in n.lower()]
    before = [r.score for r in lmmiqa.create_scorer("q-align", model=str(base), device="cpu").score(labelled["paths"][:3])]
    after = [r.score for r in lmmiqa.create_scorer("q-align", model=str(out), device="cpu").score(labelled["paths"][:3])]
    assert max(abs(a - b) for a, b in zip(after, before)) > 1e-3
