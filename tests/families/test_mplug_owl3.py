"""The mPLUG-Owl3 family: preprocessing, chat format, tokenizer, the model's batching/caching, loading of the
published folder layout and names, and scoring through the transformers backend, the CLI and Python."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from owl3_helpers import FIXTURES, OFFICIAL, media_offset, need_qwen2, small_model, tiny_checkpoint

from lmmiqa.families.mplug_owl3.image_processing import (
    MplugOwl3ImageProcessor,
    cut_prompt,
    select_grid,
)
from lmmiqa.families.mplug_owl3.processing import NO_MEDIA, MplugOwl3Processor, render_conversation
from lmmiqa.testing import make_image

PLACEHOLDER_IDS = [27, 91, 1805, 91, 29]  # "<|image|>" in Qwen2's BPE: "<", "|", "image", "|", ">"


# ------------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize(
    ("size", "grid"),
    [((400, 300), (2, 3)), ((120, 420), (4, 1)), ((256, 256), (2, 2)), ((37, 23), (2, 3)), ((1000, 250), (1, 4))],
)
def test_grid_selection_matches_hand_computed_scores(size, grid):
    # e.g. 400x300 (H/W = 0.75): shape IoU (2,3) = 768/864 = 0.889 beats (2,2) 0.75, (1,3) 0.444 ...
    assert select_grid(*size) == grid


def test_views_are_tiles_row_by_row_then_the_global_view():
    from PIL import Image

    img = make_image(400, 300, seed=1)
    out = MplugOwl3ImageProcessor().process(img)
    assert (out.rows, out.cols) == (2, 3) and out.views.shape == (7, 3, 384, 384) and out.views.dtype == np.float32
    big = np.asarray(img.resize((3 * 384, 2 * 384), Image.BICUBIC), dtype=np.float32) / 255 * 2 - 1
    # tile (1, 2): rows 384..768, columns 768..1152 of the resized image, channels first
    np.testing.assert_allclose(out.views[5], big[384:768, 768:1152].transpose(2, 0, 1), atol=1e-6)
    whole = np.asarray(img.resize((384, 384), Image.BICUBIC), dtype=np.float32) / 255 * 2 - 1
    np.testing.assert_allclose(out.views[6], whole.transpose(2, 0, 1), atol=1e-6)
    assert out.views.min() >= -1.0 and out.views.max() <= 1.0
    gray = MplugOwl3ImageProcessor().process(img.convert("L"))  # converted to RGB first
    assert gray.views.shape == (7, 3, 384, 384)


def test_cut_prompt_text():
    assert cut_prompt(2, 3) == (
        "Cut to 2 rows 3 columns with a global view\n"
        "subimg(0,0)<|image|> subimg(0,1)<|image|> subimg(0,2)<|image|>\n"
        "subimg(1,0)<|image|> subimg(1,1)<|image|> subimg(1,2)<|image|>\n"
        "global_view<|image|>"
    )


def test_chat_format():
    conv = [
        {"role": "system", "content": [{"type": "text", "text": "SYS"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
    ]
    assert render_conversation(conv) == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n<|image|>\nQ?<|im_end|>\n<|im_start|>assistant\n"
    )
    # no system message: an empty system turn (the published processor's); earlier assistant turns end with EOD
    assert render_conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                {"role": "user", "content": "again"}]) == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>"
        "<|endoftext|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(Exception, match="role"):
        render_conversation([{"role": "tool", "content": "x"}])


# ------------------------------------------------------------------------------------------- tokenizer + processor
@pytest.fixture(scope="module")
def processor():
    return MplugOwl3Processor.from_pretrained(str(tiny_checkpoint()))


def test_derived_tokenizer_layout(processor):
    tok = processor.tokenizer
    assert len(tok) == 151851  # = config vocab_size: Qwen2's 151,643 BPE entries + 208 Qwen special tokens
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>", "<|extra_204|>")}
    assert ids == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|extra_0|>": 151646,
                   "<|extra_204|>": 151850}
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643 and tok.bos_token is None
    assert tok("<|image|>", add_special_tokens=False)["input_ids"] == PLACEHOLDER_IDS
    assert [tok.convert_tokens_to_ids(str(d)) for d in range(1, 8)] == list(range(16, 23))


def test_processor_expands_tokenizes_and_offsets(processor):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Rate it."}]}]
    text = processor.apply_chat_template(conv)
    images = [make_image(400, 300, seed=1), make_image(120, 420, seed=2)]
    texts = [text, text, processor.apply_chat_template([{"role": "user", "content": "no image"}])]
    nested = processor(text=texts, images=[[images[0]], [images[1]], []], return_tensors="pt")
    flat = processor(text=texts, images=images, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "media_offset", "pixel_values"):
        assert torch.equal(nested[key], flat[key])
    ids, mask, mo = nested["input_ids"], nested["attention_mask"], nested["media_offset"]
    assert nested["pixel_values"].shape == (7 + 5, 3, 384, 384)
    assert ids.shape[1] == int(mask.sum(1).max()) and bool(mask[:, -1].all())  # left padding
    for b, (views, before) in enumerate([(7, 0), (5, 7)]):
        row = ids[b][mask[b].bool()].tolist()
        starts = [i for i in range(len(row)) if row[i : i + 5] == PLACEHOLDER_IDS]
        assert len(starts) == views
        pad = ids.shape[1] - len(row)
        seen = [sum(t > s for s in starts) for t in range(len(row))]
        assert mo[b, pad:, 1].tolist() == [before + s for s in seen] and set(mo[b, :, 0].tolist()) == {before}
        decoded = processor.tokenizer.decode(row)
        rows, cols = select_grid(*images[b].size)
        assert cut_prompt(rows, cols) in decoded
    assert set(mo[2, :, 1].tolist()) == {NO_MEDIA} and set(mo[2, :, 0].tolist()) == {12}
    with pytest.raises(Exception, match="placeholders"):
        processor(text=[text], images=[], return_tensors="pt")
    # token counts without running anything: sequence tokens + 729 vision features per view
    counts = processor._get_num_multimodal_tokens(image_sizes=[[300, 400], [420, 120]])
    single = processor(text=[text], images=[images[0]], return_tensors="np")
    # the rendered text's tokens, its placeholder tokenized on its own (the backend tokenizes the whole string,
    # which can merge a token across a placeholder: an estimate off by at most one token per image)
    pieces = re.split(r"(<\|image\|>)", text)
    n_text = sum(len(processor.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in pieces if p)
    assert n_text + counts.num_image_tokens[0] - 1 == single["input_ids"].shape[1] + 7 * 729
    assert counts.num_image_patches == [7, 5]


# ------------------------------------------------------------------------------------------- the model
def _inputs(vocab: int, seed: int = 0):
    """Two prompts with images (3 and 1 views) and one without, left-padded by hand."""
    g = torch.Generator().manual_seed(seed)
    specs = [(21, [4, 9, 15]), (14, [6]), (9, [])]
    longest = max(n for n, _ in specs)
    ids = torch.zeros(len(specs), longest, dtype=torch.long)
    mask = torch.zeros(len(specs), longest, dtype=torch.long)
    mo, before = [], 0
    for b, (n, starts) in enumerate(specs):
        ids[b, longest - n :] = torch.randint(2, vocab, (n,), generator=g)
        mask[b, longest - n :] = 1
        mo.append(media_offset(n, starts, before, longest - n))
        before += len(starts)
    pixels = torch.rand(before, 3, 384, 384, generator=g) * 2 - 1
    return specs, {"input_ids": ids, "attention_mask": mask, "media_offset": torch.stack(mo), "pixel_values": pixels}


def _single(specs, batch, b):
    n, starts = specs[b]
    before = sum(len(s) for _, s in specs[:b])
    out = {"input_ids": batch["input_ids"][b : b + 1, -n:], "attention_mask": batch["attention_mask"][b : b + 1, -n:],
           "media_offset": media_offset(n, starts)[None]}
    if starts:
        out["pixel_values"] = batch["pixel_values"][before : before + len(starts)]
    return out


def test_batch_with_left_padding_equals_one_at_a_time():
    model = small_model()
    specs, batch = _inputs(97)
    with torch.no_grad():
        together = model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1]
        for b in range(len(specs)):
            alone = model(**_single(specs, batch, b), use_cache=False, logits_to_keep=1).logits[:, -1]
            torch.testing.assert_close(together[b : b + 1], alone, atol=2e-5, rtol=0)


def test_images_reach_only_tokens_after_their_placeholder_start():
    model = small_model()
    specs, batch = _inputs(97)
    one = _single(specs, batch, 0)  # placeholders start at 4, 9, 15
    other = {**one, "pixel_values": one["pixel_values"].flip(0)}
    no_hyper = small_model(hyper_layers=())
    with torch.no_grad():
        a = model(**one, use_cache=False).logits[0]
        b = model(**other, use_cache=False).logits[0]
        plain = no_hyper(**one, use_cache=False).logits[0]
    torch.testing.assert_close(a[:5], b[:5], atol=1e-6, rtol=0)  # up to the first start token itself
    assert (a[5:] - b[5:]).abs().max() > 1e-3
    torch.testing.assert_close(a[:5], plain[:5], atol=1e-6, rtol=0)  # before the first image: plain Qwen2
    assert len({round(float((a[t] - b[t]).abs().max()), 6) for t in range(5, 21)}) > 1


def test_eager_equals_sdpa_and_outputs():
    _specs, batch = _inputs(97, seed=1)
    with torch.no_grad():
        sdpa = small_model(attn="sdpa")(**batch, use_cache=False, output_hidden_states=True)
        eager = small_model(attn="eager")(**batch, use_cache=False, logits_to_keep=2)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(sdpa.logits[:, -2:], eager.logits, atol=2e-5, rtol=0)
    assert len(sdpa.hidden_states) == 3 + 1 and sdpa.image_embeds.shape == (4, 729, 64)
    assert torch.isfinite(sdpa.logits[real]).all()


def test_generate_with_cache_equals_recomputing_every_step():
    model = small_model()
    _specs, batch = _inputs(97, seed=2)
    with torch.no_grad():
        gen = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        new = gen[:, batch["input_ids"].shape[1] :]
        ids, mask = batch["input_ids"], batch["attention_mask"]
        embeds = model.encode_images(batch["pixel_values"])
        rest = {"media_offset": batch["media_offset"], "image_embeds": embeds, "use_cache": False}
        for _ in range(4):  # no cache: the whole sequence each step; generated tokens see every image
            logits = model(input_ids=ids, attention_mask=mask, **rest).logits[:, -1]
            nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(new, ids[:, batch["input_ids"].shape[1] :])


def test_inconsistent_inputs_are_refused():
    model = small_model()
    _specs, batch = _inputs(97)
    with torch.no_grad(), pytest.raises(ValueError, match="media_offset is required"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], use_cache=False)
    with torch.no_grad(), pytest.raises(ValueError, match="image views"):
        model(**{**batch, "pixel_values": batch["pixel_values"][:2]}, use_cache=False)


# ------------------------------------------------------------------------------------------- published names
def test_full_size_names_and_shapes_match_the_published_model():
    derived = OFFICIAL / "derived" / "mplug_owl3_7b_240728_derived_state_dict_keys.json"
    if not derived.is_file():
        pytest.skip(f"{derived} not found (../shared is absent)")
    from lmmiqa.families.mplug_owl3.configuration import MplugOwl3Config
    from lmmiqa.families.mplug_owl3.modeling import MplugOwl3ForConditionalGeneration

    published = json.loads((OFFICIAL / "hf-files" / "config.json").read_text())
    config = MplugOwl3Config(**published)
    with torch.device("meta"):
        model = MplugOwl3ForConditionalGeneration(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {r["name"]: r["shape"] for r in json.loads(derived.read_text())["keys"]}
    assert len(theirs) == 805
    head = {k for k in theirs if k.startswith("vision_model.head.")}
    assert len(head) == 11 and set(theirs) - set(ours) == head  # the unused SigLIP pooling head
    assert ours == {k: v for k, v in theirs.items() if k not in head}
    assert sum(int(np.prod(s)) for s in ours.values()) == 8_061_197_888 - sum(int(np.prod(theirs[k])) for k in head)
    hyper = sorted({int(k.split(".")[3]) for k in ours if "v_kv_proj" in k})
    assert hyper == [0, 8, 16, 24]  # hyper_layers [1, 9, 17, 25] are 1-based


def test_checkpoint_with_and_without_the_pooling_head_load_the_same(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig

    single = tiny_checkpoint("single")
    with_head = tmp_path / "with-head"
    shutil.copytree(single, with_head)
    weights = load_file(str(with_head / "model.safetensors"))
    weights["vision_model.head.probe"] = torch.zeros(1, 1, 32)
    weights["vision_model.head.attention.in_proj_weight"] = torch.zeros(96, 32)
    save_file(weights, str(with_head / "model.safetensors"), metadata={"format": "pt"})
    prompts = _prompts()[1:]
    cands = [str(d) for d in range(1, 8)]
    a = TransformersBackend(TransformersConfig(model=str(single), device="cpu", max_batch_tokens=0))
    b = TransformersBackend(TransformersConfig(model=str(with_head), device="cpu", max_batch_tokens=0))
    sharded = TransformersBackend(TransformersConfig(model=str(tiny_checkpoint("sharded")), device="cpu", max_batch_tokens=0))
    np.testing.assert_allclose(a.level_logprobs(prompts, cands), b.level_logprobs(prompts, cands), atol=1e-6)
    np.testing.assert_allclose(a.level_logprobs(prompts, cands), sharded.level_logprobs(prompts, cands), atol=1e-6)


# ------------------------------------------------------------------------------------------- through lmmiqa
def _prompts():
    from lmmiqa.methods.standard_guided import StandardGuided, StandardGuidedConfig

    sg = StandardGuided(StandardGuidedConfig(model="unused"))
    return [sg.build_prompt(make_image(400, 300, seed=1)), sg.build_prompt(make_image(60, 200, seed=2))]


def test_published_layout_loads_through_the_transformers_backend():
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig
    from lmmiqa.errors import ModelLoadError

    folder = tiny_checkpoint()
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "mplugowl3" and cfg["auto_map"]["AutoModel"] == "modeling_mplugowl3.mPLUGOwl3Model"
    backend = TransformersBackend(TransformersConfig(model=str(folder), device="cpu", trust_remote_code=True))
    assert type(backend.model).__name__ == "MplugOwl3ForConditionalGeneration"  # native even with the opt-in
    assert backend.family.model_type == "mplugowl3" and backend.describe()["family"] == "mplugowl3"
    assert backend.conventions().image_position == "before" and backend.conventions().system_prompt
    assert backend.describe()["pixel_budget"] == "model"  # fixed views: max_pixels changes nothing
    prompts = _prompts()
    cands = [str(d) for d in range(1, 8)]
    both = backend.level_logprobs(prompts, cands)
    one = np.concatenate([backend.level_logprobs(prompts[:1], cands), backend.level_logprobs(prompts[1:], cands)])
    np.testing.assert_allclose(both, one, atol=2e-5)
    counts = backend.prompt_token_counts(prompts)
    expected = backend.processor._get_num_multimodal_tokens(image_sizes=[[300, 400], [200, 60]]).num_image_tokens
    assert [c["per_image"] for c in counts] == [[expected[0]], [expected[1]]]
    assert [c["per_image"][0] // 729 for c in counts] == [7, 4]  # (2, 3) and (3, 1) tiles + the global view
    eager = TransformersBackend(TransformersConfig(model=str(folder), device="cpu", attn_implementation="eager"))
    np.testing.assert_allclose(eager.level_logprobs(prompts[1:], cands), both[1:], atol=2e-5)
    bf16 = TransformersBackend(TransformersConfig(model=str(folder), device="cpu", dtype="bfloat16"))
    assert bf16.model.dtype == torch.bfloat16
    np.testing.assert_allclose(bf16.level_logprobs(prompts[1:], cands), both[1:], atol=0.1)
    hidden = backend.hidden_states(prompts)  # the last layer's normed state at the answer position
    assert hidden.shape == (2, 64) and np.isfinite(hidden).all()
    texts = backend.generate(prompts, max_new_tokens=2)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ModelLoadError, match="Flash Attention"):
        TransformersBackend(TransformersConfig(model=str(folder), device="cpu", attn_implementation="flash_attention_2"))


def test_folder_without_tokenizer_files_says_how_to_derive_them(tmp_path):
    import shutil

    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig
    from lmmiqa.errors import ModelLoadError

    folder = tmp_path / "no-tok"
    shutil.copytree(tiny_checkpoint("single"), folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="derive_tokenizer"):
        TransformersBackend(TransformersConfig(model=str(folder), device="cpu"))


def test_cli_and_python_scores_equal_the_official_code(tmp_path, capsys):
    """Standard-guided (the LLM-IQA prompt, K = 7) on the image of the official parity fixture: the CLI and Python give
    the same probabilities, and both equal the softmax of the digit logits the official code computed."""
    import lmmiqa
    from lmmiqa.cli import main

    folder = tiny_checkpoint()
    image = tmp_path / "landscape.png"
    make_image(400, 300, seed=1).save(image)
    fx = np.load(FIXTURES / "mplug_owl3_parity.npz")
    digits = fx["landscape_400x300/logits_digits"].astype(np.float64)
    official = np.exp(digits - digits.max())
    official /= official.sum()

    rc = main(["score", str(image), "--method", "standard-guided", "--model", str(folder), "--device", "cpu",
               "--format", "json"])
    assert rc == 0
    cli = json.loads(capsys.readouterr().out)[0]
    py = lmmiqa.create_scorer("standard-guided", model=str(folder), device="cpu").score(str(image))[0]
    assert cli["probabilities"] == pytest.approx(py.probabilities, abs=1e-9)
    assert cli["score"] == pytest.approx(py.score, abs=1e-9)
    np.testing.assert_allclose([py.probabilities[str(k)] for k in range(1, 8)], official, atol=1e-5)
    assert py.score == pytest.approx(float(official @ np.arange(1, 8)), abs=1e-4)


def test_decoded_official_prompts_name_the_grid_lmmiqa_picks():
    need_qwen2()
    from lmmiqa.families.mplug_owl3.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tiny_checkpoint()))
    fx = np.load(FIXTURES / "mplug_owl3_parity.npz")
    meta = json.loads((FIXTURES / "mplug_owl3_parity.json").read_text())
    for name, info in meta["cases"].items():
        if info["size"] is None:
            continue
        text = tok.decode(fx[f"{name}/input_ids"].tolist())
        rows, cols = map(int, re.search(r"Cut to (\d+) rows (\d+) columns", text).groups())
        assert select_grid(*info["size"]) == (rows, cols), name
        assert info["pixel_shape"][0] == rows * cols + 1


def test_llm_iqa_paper_preset_runs_on_the_published_layout(tmp_path, capsys):
    """``lmmiqa score IMG --method llm-iqa --preset paper --model FOLDER`` (the segmenter swapped for the weight-free
    one: no SAM 2 weights here), and the same numbers from Python."""
    pytest.importorskip("skimage")
    import lmmiqa
    from lmmiqa.cli import main

    folder = str(tiny_checkpoint())
    image = tmp_path / "photo.png"
    make_image(160, 120, seed=3).save(image)
    seg = {"segmenter": "felzenszwalb", "segmenter_options": {"max_regions": 3}}
    rc = main(["score", str(image), "--method", "llm-iqa", "--preset", "paper", "--model", folder, "--device", "cpu",
               "--segmenter", "felzenszwalb", "--option", 'segmenter_options={"max_regions": 3}', "--format", "json"])
    assert rc == 0
    cli = json.loads(capsys.readouterr().out)[0]
    assert cli["error"] is None and cli["model"] == folder
    d = cli["details"]
    assert d["preset"] == "paper" and d["readout"] == "argmax" and d["levels"] == 7 and d["min_area"] == 0.01
    assert isinstance(d["greedy_is_level"], bool) and "greedy_token" in d["models"][0]
    assert all(reg["crop"] == reg["bbox"] for reg in d["regions"])  # min_crop_side 0: the bounding box as it is
    assert d["global"] in range(1, 8) and all(reg["score"] in range(1, 8) for reg in d["regions"])  # argmax levels
    mixed = (d["global"] + d["local"]) / 2 if d["regions"] else d["global"]  # λ = 1
    assert cli["score"] == pytest.approx(mixed, abs=1e-9)
    py = lmmiqa.create_scorer("llm-iqa", preset="paper", model=folder, device="cpu", **seg).score(str(image))[0]
    assert py.score == pytest.approx(cli["score"], abs=1e-9) and py.details["preset"] == "paper"
