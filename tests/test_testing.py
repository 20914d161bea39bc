"""The offline test kit (lmmiqa.testing) and the torchvision-free processor loader (backends.hf_processor)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lmmiqa.errors import ConfigError, ModelLoadError, UnknownNameError
from lmmiqa.testing import TINY_ARCHS, make_image, make_tiny_vlm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmmiqa.backends.hf_processor import (  # noqa: E402
    image_only_processor_class,
    is_video_processor_error,
    load_processor,
)
from lmmiqa.testing import ForceLevelHook, force_token  # noqa: E402

_MODELS: dict[str, tuple[object, object]] = {}


def _load(path):
    """Model + processor per folder, loaded once per test session (tests only read them)."""
    key = str(path)
    if key not in _MODELS:
        model = transformers.AutoModelForImageTextToText.from_pretrained(path).eval()
        _MODELS[key] = (model, load_processor(path))
    return _MODELS[key]


def _prompt(processor, n_images: int = 1, text: str = "How would you rate the quality of this image?") -> str:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    messages = [
        {"role": "user", "content": content},
        {"role": "assistant", "content": "The quality of the image is"},
    ]
    return processor.apply_chat_template(messages, tokenize=False, continue_final_message=True)


def _last_logits(model, inputs):
    with torch.no_grad():
        return model(**inputs, logits_to_keep=1).logits[:, -1].float()


def _image_token_id(model) -> int:
    cfg = model.config
    return getattr(cfg, "image_token_id", None) or cfg.image_token_index


# ------------------------------------------------------------------------------------------- no torch needed


def test_import_testing_module_does_not_import_torch():
    code = "import sys, lmmiqa.testing, lmmiqa.backends.hf_processor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_arch_lists_known(tmp_path):
    with pytest.raises(UnknownNameError, match="qwen2_5_vl") as info:
        make_tiny_vlm("qwen25_vl", tmp_path)
    assert "did you mean 'qwen2_5_vl'" in str(info.value)


def test_make_image_deterministic_and_not_blank():
    a, b, c = make_image(64, 48, seed=3), make_image(64, 48, seed=3), make_image(64, 48, seed=4)
    assert a.mode == "RGB" and a.size == (64, 48)
    arr = np.asarray(a)
    assert np.array_equal(arr, np.asarray(b))
    assert not np.array_equal(arr, np.asarray(c))
    assert arr.std() > 20 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 100
    assert make_image(1, 1).size == (1, 1)
    with pytest.raises(ConfigError):
        make_image(0, 10)


def test_video_error_classifier():
    assert is_video_processor_error(
        AttributeError("VIDEO_PROCESSOR_MAPPING has no attribute '_extra_content'")
    )
    assert is_video_processor_error(ImportError("Qwen2VLVideoProcessor requires the Torchvision library"))
    try:
        try:
            raise ValueError("Can't load video processor for 'x'")
        except ValueError as inner:
            raise OSError("wrapped") from inner
    except OSError as outer:
        assert is_video_processor_error(outer)
    assert not is_video_processor_error(
        OSError("x is not a local folder and is not a valid model identifier")
    )


# -------------------------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tokenizer_has_single_token_levels(tiny_model_path, arch):
    _, processor = _load(tiny_model_path(arch))
    tok = processor.tokenizer
    words = [" excellent", " good", " fair", " poor", " bad", "Good", "Excellent", "Bad"]
    words += [str(d) for d in range(10)] + list("ABCDE") + [f" {c}" for c in "ABCDE"]
    for word in words:
        ids = tok.encode(word, add_special_tokens=False)
        assert len(ids) == 1, (word, ids)
        assert tok.decode(ids) == word
    assert tok.encode("10", add_special_tokens=False) == tok.encode(
        "1", add_special_tokens=False
    ) + tok.encode("0", add_special_tokens=False)
    text = '{"score": 3.5, "level": "good"} [1, 2]'
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert len(tok) < 1000


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_roundtrip_and_left_padded_batch_matches_single(tiny_model_path, arch):
    model, processor = _load(tiny_model_path(arch))
    text = _prompt(processor)
    assert text.endswith("The quality of the image is")
    images = [make_image(64, 48, seed=0), make_image(40, 72, seed=1)]
    batch = processor(
        text=[text, text],
        images=[[images[0]], [images[1]]],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: answers line up at the end
    batched = _last_logits(model, batch)
    singles = torch.cat(
        [_last_logits(model, processor(text=[text], images=[[im]], return_tensors="pt")) for im in images]
    )
    assert batched.shape == (2, model.config.get_text_config().vocab_size)
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_multi_image_prompt(tiny_model_path, arch):
    model, processor = _load(tiny_model_path(arch))
    two, one = _prompt(processor, 2, "Compare the first image with the second image."), _prompt(processor)
    images = [make_image(64, 48, seed=0), make_image(40, 72, seed=1), make_image(50, 50, seed=2)]
    batch = processor(
        text=[two, one],
        images=[images[:2], images[2:]],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    batched = _last_logits(model, batch)
    singles = torch.cat(
        [
            _last_logits(model, processor(text=[two], images=[images[:2]], return_tensors="pt")),
            _last_logits(model, processor(text=[one], images=[images[2:]], return_tensors="pt")),
        ]
    )
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)
    assert (batch["input_ids"][0] == _image_token_id(model)).sum() > 0


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_force_hook_sets_argmax_and_is_removed(tiny_model_path, arch):
    model, processor = _load(tiny_model_path(arch))
    inputs = processor(text=[_prompt(processor)], images=[[make_image(48, 48)]], return_tensors="pt")
    before = _last_logits(model, inputs)
    tid = processor.tokenizer.encode(" fair", add_special_tokens=False)[0]
    if int(before.argmax()) == tid:  # pragma: no cover - random weights
        tid = processor.tokenizer.encode(" poor", add_special_tokens=False)[0]
    with force_token(model, tid) as hook:
        assert isinstance(hook, ForceLevelHook)
        forced = _last_logits(model, inputs)
    assert int(forced.argmax()) == tid
    assert float(forced[0, tid]) == pytest.approx(float(before[0, tid]) + 20.0, abs=1e-4)
    torch.testing.assert_close(_last_logits(model, inputs), before)  # removed on exit


def test_force_hook_rejects_bad_token(tiny_vlm):
    model, _ = _load(tiny_vlm)
    with pytest.raises(ConfigError):
        ForceLevelHook(model, 10**9)
    with pytest.raises(ConfigError):
        ForceLevelHook(object(), 1)


def test_generate_runs(tiny_vlm):
    model, processor = _load(tiny_vlm)
    inputs = processor(text=[_prompt(processor)], images=[[make_image()]], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4 or out[0, -1] == processor.tokenizer.eos_token_id


def test_same_seed_same_weights_other_seed_differs(tmp_path, tiny_model_path):
    ref = tiny_model_path("internvl")
    again = make_tiny_vlm("internvl", tmp_path / "again", seed=0)
    other = make_tiny_vlm("internvl", tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "processor_config.json", "config.json"):
        assert (ref / name).read_bytes() == (again / name).read_bytes(), name
    assert (ref / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


# ----------------------------------------------------------------------------------------- hf_processor


def test_image_only_class_keeps_settings(tiny_model_path):
    import inspect

    base = transformers.LlavaOnevisionProcessor
    variant = image_only_processor_class(base)
    assert variant is image_only_processor_class(base)  # cached
    assert issubclass(variant, base) and variant.__name__ == base.__name__
    params = list(inspect.signature(variant.__init__).parameters)
    assert "video_processor" not in params and "num_image_tokens" in params
    assert variant.get_attributes() == ["image_processor", "tokenizer"]

    path = tiny_model_path("llava_onevision")
    saved = json.loads((path / "processor_config.json").read_text())
    assert saved["processor_class"] == "LlavaOnevisionProcessor"
    assert saved["num_image_tokens"] == 16
    assert saved["vision_feature_select_strategy"] == "full"
    assert "image_processor" in saved
    assert (path / "chat_template.jinja").is_file()
    _, processor = _load(path)
    assert processor.num_image_tokens == 16
    assert processor.vision_feature_select_strategy == "full"


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_saved_processor_config_is_standard_and_resave_is_stable(tiny_model_path, tmp_path, arch):
    path = tiny_model_path(arch)
    saved = json.loads((path / "processor_config.json").read_text())
    # A nested video processor entry lets plain AutoProcessor load the folder where torchvision exists.
    video = saved["video_processor"]
    assert video["video_processor_type"].endswith("VideoProcessor")
    assert video["size"] == saved["image_processor"]["size"]
    _, processor = _load(path)
    processor.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "processor_config.json").read_text()) == saved
    reloaded = load_processor(tmp_path / "resaved")
    assert type(reloaded) is type(processor)
    assert reloaded.chat_template == processor.chat_template


def test_padding_side_kwarg_is_honoured(tiny_vlm):
    _, processor = _load(tiny_vlm)
    text = _prompt(processor)
    images = [[make_image(64, 48)], [make_image(30, 90, seed=1)]]
    for side, column in (("left", -1), ("right", 0)):
        mask = processor(
            text=[text, text], images=images, padding=True, padding_side=side, return_tensors="pt"
        )["attention_mask"]
        assert (mask[:, column] == 1).all() and not (mask == 1).all()


def test_tiny_vlm_cached_builds_once():
    from lmmiqa.testing import tiny_vlm_cached

    first = tiny_vlm_cached("llava_onevision")
    assert tiny_vlm_cached("llava_onevision") == first
    assert (first / "model.safetensors").is_file() and (first / "config.json").is_file()
    with pytest.raises(UnknownNameError):
        tiny_vlm_cached("llava")


def test_internvl_settings_survive_reload(tiny_model_path):
    _, processor = _load(tiny_model_path("internvl"))
    assert processor.image_seq_length == 4
    assert processor.start_image_token == "<img>" and processor.image_token == "<IMG_CONTEXT>"


def test_load_processor_missing_path_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load the processor"):
        load_processor(tmp_path / "nope")
    with pytest.raises(ModelLoadError):
        load_processor(tmp_path)  # empty folder


def test_image_only_processor_rejects_nothing_for_images(tiny_vlm):
    _, processor = _load(tiny_vlm)
    assert getattr(type(processor), "lmmiqa_image_only", False) or hasattr(processor, "video_processor")
