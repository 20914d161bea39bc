"""The model-family seam (lmmiqa.families): detection, registration, the remote-code refusal, and a checkpoint of a
natively implemented family loading through the transformers backend's ordinary path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lmmiqa import families, registry
from lmmiqa.errors import ModelLoadError
from lmmiqa.families.base import DEFAULT_CONVENTIONS, PromptConventions

pytest.importorskip("transformers")

from seam_family import MODEL_TYPE  # tests/families is on sys.path under pytest


def _rewrite_config(folder, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.fixture
def seam_checkpoint(tmp_path, tiny_model_path):
    """The tiny Qwen2.5-VL saved as a checkpoint of the test family, with an auto_map to code that does not exist
    (as the published mPLUG-Owl2 checkpoints point to their remote code)."""
    folder = tmp_path / "seam-ckpt"
    shutil.copytree(tiny_model_path("qwen2_5_vl"), folder)
    _rewrite_config(folder, model_type=MODEL_TYPE,
                    auto_map={"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"})
    return folder


@pytest.fixture
def seam_registered(monkeypatch):
    monkeypatch.setitem(registry.FAMILIES, MODEL_TYPE, "seam_family:FAMILY")
    yield registry.resolve("family", MODEL_TYPE)


def test_prompt_conventions_validate():
    assert DEFAULT_CONVENTIONS.image_position == "before"
    with pytest.raises(Exception, match="image_position"):
        PromptConventions(image_position="middle")


def test_transformers_checkpoint_is_not_a_family(tiny_model_path):
    tiny_qwen_path = tiny_model_path("qwen2_5_vl")
    assert families.family_for(str(tiny_qwen_path)) is None
    assert families.prepare(str(tiny_qwen_path)) is None


def test_unknown_remote_code_checkpoint_is_refused_with_the_opt_in(seam_checkpoint):
    with pytest.raises(ModelLoadError) as info:
        families.prepare(str(seam_checkpoint))
    msg = str(info.value)
    assert MODEL_TYPE in msg and "trust_remote_code=True" in msg and "auto_map" in msg
    # the explicit opt-in lets transformers decide (its own remote-code path)
    assert families.prepare(str(seam_checkpoint), trust_remote_code=True) is None


def test_backend_refuses_remote_code_before_loading(seam_checkpoint):
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig

    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        TransformersBackend(TransformersConfig(model=str(seam_checkpoint), device="cpu"))


def test_native_family_loads_through_the_ordinary_path(seam_checkpoint, seam_registered, tiny_model_path):
    tiny_qwen_path = tiny_model_path("qwen2_5_vl")
    from lmmiqa.backends.transformers_local import TransformersBackend, TransformersConfig
    from lmmiqa.levels import QALIGN_SCALE
    from lmmiqa.testing import make_image
    from lmmiqa.types import Prompt

    assert families.family_for(str(seam_checkpoint)) is seam_registered
    backend = TransformersBackend(TransformersConfig(model=str(seam_checkpoint), device="cpu", max_batch_tokens=0))
    assert type(backend.model).__name__ == "SeamModel"
    assert backend.family is seam_registered
    assert backend.conventions().image_position == "after"
    assert backend.describe()["family"] == MODEL_TYPE
    # same weights as the plain checkpoint: the same level log-probabilities
    plain = TransformersBackend(TransformersConfig(model=str(tiny_qwen_path), device="cpu", max_batch_tokens=0))
    assert plain.family is None and plain.conventions() == DEFAULT_CONVENTIONS
    prompts = [Prompt.simple([make_image(64, 48, seed=s), "How would you rate the quality of this image?"],
                             answer_prefix="The quality of the image is") for s in (1, 2)]
    cands = QALIGN_SCALE.candidates("The quality of the image is")
    np.testing.assert_allclose(backend.level_logprobs(prompts, cands), plain.level_logprobs(prompts, cands), atol=1e-5)
    # the backend adopted from memory recognises the family by the model's config
    adopted = TransformersBackend.from_loaded(backend.model, backend.processor, model_id="m")
    assert adopted.family is seam_registered
