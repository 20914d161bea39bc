"""Image encoders: spec parsing, tiny CLIP/SigLIP/DINOv2 built from configs, the VLMs' own vision towers."""

from __future__ import annotations

import numpy as np
import pytest

from lmmiqa import registry
from lmmiqa.errors import ConfigError, UnknownNameError, UnsupportedError
from lmmiqa.retrieval.encoders import EncoderSpec, create_encoder, split_per_image
from lmmiqa.testing import TINY_ARCHS, make_image


def _images():
    return [make_image(64, 48, 0), make_image(40, 72, 1), make_image(96, 96, 2)]


def test_spec_parsing():
    assert EncoderSpec.parse("clip:openai/clip-vit-large-patch14").model == "openai/clip-vit-large-patch14"
    assert EncoderSpec.parse("clip:/abs/path:with:colons").model == "/abs/path:with:colons"
    vt = EncoderSpec.parse("vision-tower", model="Qwen/Qwen3-VL-8B-Instruct")
    assert vt.spec == "vision-tower:Qwen/Qwen3-VL-8B-Instruct" and vt.pooling == "mean"
    assert EncoderSpec.parse("VT:m").kind == "vision-tower"
    assert EncoderSpec.parse("dinov2:m").pooling == "cls"
    assert EncoderSpec.parse("dinov2:m", pooling="mean").pooling == "mean"
    assert EncoderSpec.parse("siglip:m").pooling == "projection"
    assert EncoderSpec.from_dict(vt.to_dict()) == vt


def test_spec_errors_list_choices():
    with pytest.raises(UnknownNameError, match="known: clip, dinov2, siglip, vision-tower"):
        EncoderSpec.parse("resnet:x")
    with pytest.raises(ConfigError, match="--model"):
        EncoderSpec.parse("vision-tower")
    with pytest.raises(ConfigError, match="needs a model"):
        EncoderSpec.parse("clip")
    with pytest.raises(ConfigError, match="also given"):
        EncoderSpec.parse("vision-tower:a", model="b")
    with pytest.raises(ConfigError, match="choose: projection"):
        EncoderSpec.parse("clip:m", pooling="cls")


def test_every_registered_encoder_resolves():
    for name in registry.names("encoder"):
        cls = registry.resolve("encoder", name)
        assert cls.name == name


def test_split_per_image_layouts():
    torch = pytest.importorskip("torch")
    per = [torch.ones(4, 8), torch.ones(9, 8)]
    assert split_per_image(per, 2, {}) is not per and len(split_per_image(per, 2, {})) == 2
    tiles = torch.arange(5 * 4 * 8, dtype=torch.float32).reshape(5, 4, 8)
    parts = split_per_image(tiles, 2, {"num_patches": torch.tensor([2, 3])})
    assert [tuple(p.shape) for p in parts] == [(2, 4, 8), (3, 4, 8)]
    flat = torch.ones(13, 8)
    grid = torch.tensor([[1, 4, 4], [1, 6, 6]])
    parts = split_per_image(flat, 2, {"image_grid_thw": grid}, merge_size=2)
    assert [tuple(p.shape) for p in parts] == [(4, 8), (9, 8)]
    assert len(split_per_image(torch.ones(2, 5, 8), 2, {})) == 2
    with pytest.raises(UnsupportedError, match="which of the 3 images"):
        split_per_image(torch.ones(7, 8), 3, {})
    with pytest.raises(UnsupportedError, match="3 feature tensors for 2"):
        split_per_image([torch.ones(1, 8)] * 3, 2, {})


@pytest.mark.parametrize("kind,dim", [("clip", 24), ("siglip", 32), ("dinov2", 32)])
def test_tiny_hf_encoders(tiny_encoder_path, kind, dim):
    enc = create_encoder(f"{kind}:{tiny_encoder_path(kind)}", device="cpu", batch_size=2)
    imgs = _images()
    batched = enc.embed(imgs)
    assert batched.dtype == np.float32 and batched.shape == (3, dim)
    single = np.concatenate([enc.embed([im]) for im in imgs])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])
    assert enc.describe()["kind"] == kind


def test_dinov2_mean_pooling_differs_from_cls(tiny_encoder_path):
    path = tiny_encoder_path("dinov2")
    cls_vec = create_encoder(f"dinov2:{path}", device="cpu").embed(_images()[:1])
    mean_vec = create_encoder(f"dinov2:{path}", pooling="mean", device="cpu").embed(_images()[:1])
    assert cls_vec.shape == mean_vec.shape and not np.allclose(cls_vec, mean_vec)


def test_missing_encoder_weights_give_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    from lmmiqa.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="local folder"):
        create_encoder(f"clip:{tmp_path}", device="cpu")


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_vision_tower_of_every_tiny_vlm(tiny_model_path, arch):
    enc = create_encoder("vision-tower", model=str(tiny_model_path(arch)), device="cpu", batch_size=3)
    imgs = _images()
    batched = enc.embed(imgs)
    assert batched.shape == (3, 64) and batched.dtype == np.float32  # the language model's hidden size
    single = np.concatenate([enc.embed([im]) for im in imgs])
    np.testing.assert_allclose(batched, single, atol=1e-5)
