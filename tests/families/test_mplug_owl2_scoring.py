"""Q-Align's checkpoint layout scored through ``lmmiqa score`` and the Python API (same numbers as the official code),
Q-Scorer's release loaded and scored as its iqa_eval.py, and the errors of broken checkpoint folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import lmmiqa
from lmmiqa.cli import main
from lmmiqa.errors import ModelLoadError

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def parity_png(tmp_path_factory, owl2_images):
    path = tmp_path_factory.mktemp("img") / "parity.png"  # lossless: the official fixture's pixels
    owl2_images[0].save(path)
    return path


def _official_score(owl2_files) -> float:
    return float(json.loads((owl2_files["parity"] / "result.json").read_text())["score"])


def test_q_align_on_one_align_uses_its_format_and_reproduces_the_official_score(owl2_parity_folder, parity_png,
                                                                                owl2_files, capsys):
    expected = _official_score(owl2_files)  # 2.93396: the official code's expectation over 5..1
    scorer = lmmiqa.create_scorer("q-align", model=str(owl2_parity_folder), device="cpu", dtype="float32")
    r = scorer.score(str(parity_png))[0]
    assert r.ok and r.score == pytest.approx(expected, abs=1e-4)
    assert scorer.layout() == ("after", True)  # the family's conventions: question first, padded to a square
    assert scorer.describe()["layout"] == {"image_position": "after", "pad_to_square": True}
    assert "preset" not in r.details
    # the paper preset (its model replaced by the local folder) gives the same number and is recorded
    paper = lmmiqa.create_scorer("q-align", preset="paper", model=str(owl2_parity_folder), device="cpu",
                                 dtype="float32")
    rp = paper.score(str(parity_png))[0]
    assert rp.score == pytest.approx(expected, abs=1e-4) and rp.details["preset"] == "paper"
    assert paper.describe()["preset"] == "paper"
    # the command line, in the published folder layout
    rc = main(["score", str(parity_png), "--method", "q-align", "--model", str(owl2_parity_folder), "--device", "cpu",
               "--dtype", "float32", "--format", "json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["score"] == pytest.approx(expected, abs=1e-4) and out[0]["method"] == "q-align"
    assert out[0]["details"]["image_tokens"] == 65
    # explicit options override the family's conventions
    other = lmmiqa.create_scorer("q-align", model=str(owl2_parity_folder), device="cpu", dtype="float32",
                                 image_position="before", pad_to_square=False)
    assert other.layout() == ("before", False)
    assert abs(other.score(str(parity_png))[0].score - expected) > 1e-6


def test_q_align_paper_preset_values_have_sources():
    from lmmiqa.methods.q_align import QAlign

    preset = QAlign.presets["paper"]
    assert preset.options() == {"model": "q-future/one-align", "image_position": "after", "pad_to_square": True,
                                "readout": "expected"}
    assert all(v.source and not v.is_decision for v in preset.values.values())
    assert any("0-1" in n for n in preset.notes)  # scorer.py's 1, .75, .5, .25, 0 weights: a linear map
    with pytest.raises(lmmiqa.errors.ConfigError, match="image_position"):
        lmmiqa.create_scorer("q-align", image_position="middle")


def test_broken_checkpoint_folders_fail_once_with_the_first_tensors(owl2_parity_folder, tmp_path, parity_png, capsys):
    import torch

    missing = tmp_path / "missing-shard"
    shutil.copytree(owl2_parity_folder, missing)
    (missing / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"weight file\(s\) named by the index are missing: pytorch_model-00002"):
        lmmiqa.create_scorer("q-align", model=str(missing), device="cpu").score(str(parity_png))
    rc = main(["score", str(parity_png), "--method", "q-align", "--model", str(missing), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "pytorch_model-00002-of-00002.bin holds" in err and err.count("Traceback") == 0

    bad = tmp_path / "bad-shape"
    shutil.copytree(owl2_parity_folder, bad)
    shard = bad / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard)
    state["model.layers.0.self_attn.q_proj.weight"] = state["model.layers.0.self_attn.q_proj.weight"][:, :8].clone()
    del state["model.layers.0.mlp.up_proj.weight"]
    torch.save(state, shard)
    with pytest.raises(ModelLoadError) as info:
        lmmiqa.create_scorer("q-align", model=str(bad), device="cpu").score(str(parity_png))
    msg = str(info.value)
    assert "model.layers.0.mlp.up_proj.weight" in msg and "model.layers.0.self_attn.q_proj.weight (64, 8)" in msg


def test_unknown_remote_code_model_type_names_the_native_families(owl2_parity_folder, tmp_path):
    from lmmiqa import families

    other = tmp_path / "remote-only"
    other.mkdir()
    cfg = json.loads((owl2_parity_folder / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "some_remote_arch"}))
    with pytest.raises(ModelLoadError) as info:
        families.prepare(str(other))
    msg = str(info.value)
    assert "mplug_owl2 (mPLUG-Owl2)" in msg and "trust_remote_code=True" in msg
    assert families.family_for(str(owl2_parity_folder)).title == "mPLUG-Owl2"


def test_qscorer_release_scores_as_its_iqa_eval(owl2_release_folder, owl2_base_folder, owl2_images, official_fixture,
                                                tmp_path):
    ref = official_fixture("official_qscorer.json")
    paths = []
    for i, im in enumerate(owl2_images):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    scorer = lmmiqa.create_scorer("q-scorer", adapter=str(owl2_release_folder), model=str(owl2_base_folder),
                                  device="cpu", dtype="float32")
    assert scorer.is_release and scorer.scale == (0.0, 5.0)
    results = scorer.score([str(p) for p in paths])
    heads = ref["float32_head"]
    for i, r in enumerate(results):
        assert r.ok, r.error
        assert r.details["head_raw"] == pytest.approx(heads[i], abs=1e-4)
        assert r.score == pytest.approx(min(max(heads[i], 0.0), 5.0), abs=1e-4)
        assert r.details["release"] is True and r.details["clamped"] is False
        # the score tokens' distribution after the greedy token (iqa_eval's second step, its "logits")
        row = ref["float32_step1"]
        off = np.array(row["level_logits"][i])[::-1] - row["logsumexp"][i]  # <score1>..<score5>
        mine = np.log([r.probabilities[str(k)] for k in range(1, 6)])
        np.testing.assert_allclose(mine - mine.max(), off - off.max(), atol=1e-4)
        assert r.details["covered_mass"] == pytest.approx(float(np.exp(off).sum()), abs=1e-4)
    describe = scorer.describe()
    assert describe["base_model"] and describe["k"] == 5
    # the release's folder given as the model is recognised too
    again = lmmiqa.create_scorer("q-scorer", model=str(owl2_release_folder), device="cpu")
    assert again.config.adapter == str(owl2_release_folder) and again.config.model is None


def test_qscorer_release_in_float16_equals_the_official_float16(owl2_release_folder, owl2_base_folder, owl2_images,
                                                                 official_fixture):
    from lmmiqa.methods.q_scorer_release import load_release, predict_release

    ref = official_fixture("official_qscorer.json")
    loaded = load_release(owl2_release_folder, model=str(owl2_base_folder), device="cpu", dtype="float16")
    inputs = loaded.backend.encode([lmmiqa.types.Prompt.simple(["How would you rate the quality of this image?",
                                                                owl2_images[0]], answer_prefix="The quality of the image is")])
    ids = inputs["input_ids"][0].tolist()
    assert [t for i, t in enumerate(ids) if not (t == -200 and i and ids[i - 1] == -200)] == ref["input_ids"]
    pred = predict_release(loaded, owl2_images)
    assert pred.next_token == [row[0] for row in ref["float16_appended"]]
    np.testing.assert_allclose(pred.head_raw, ref["float16_head"], atol=2e-3)


def test_qscorer_release_with_foreign_tensors_fails_naming_them(owl2_release_folder, owl2_base_folder, tmp_path):
    import torch

    from lmmiqa.methods.q_scorer_release import load_release

    broken = tmp_path / "release"
    shutil.copytree(owl2_release_folder, broken)
    state = torch.load(broken / "non_lora_trainables.bin")
    state["base_model.model.model.extra_tower.weight"] = torch.zeros(2, 2)
    torch.save(state, broken / "non_lora_trainables.bin")
    with pytest.raises(ModelLoadError, match=r"1 unexpected tensor\(s\), first: model.extra_tower.weight"):
        load_release(broken, model=str(owl2_base_folder), device="cpu", dtype="float32")


def test_qscorer_paper_preset_names_the_release_and_its_base(owl2_release_folder, owl2_base_folder, tmp_path):
    scorer = lmmiqa.create_scorer("q-scorer", preset="paper", device="cpu")
    assert scorer.config.adapter == "2kxx/Qscorer_lora_5_1" and scorer.config.model == "MAGAer13/mplug-owl2-llama2-7b"
    assert scorer.is_release and scorer.preset == "paper"
    image = tmp_path / "a.png"
    from lmmiqa.testing import make_image

    make_image(32, 24, seed=1).save(image)
    # offline and not cached: one run-level error saying how to get the release (tests run with HF_HUB_OFFLINE=1)
    with pytest.raises(ModelLoadError, match=r"Qscorer_lora_5_1.*(hf download|huggingface-cli)"):
        scorer.score(str(image))
    # explicit options override the preset's hub ids with local folders; the preset is still recorded
    local = lmmiqa.create_scorer("q-scorer", preset="paper", adapter=str(owl2_release_folder),
                                 model=str(owl2_base_folder), device="cpu", dtype="float32")
    r = local.score(str(image))[0]
    assert r.ok and r.details["preset"] == "paper" and 0.0 <= r.score <= 5.0
    with pytest.raises(lmmiqa.errors.ConfigError, match="neither an lmmiqa Q-Scorer folder"):
        lmmiqa.create_scorer("q-scorer", adapter=str(tmp_path))
