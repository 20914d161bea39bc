"""The process-wide backend cache: shared while a folder is unchanged, reloaded once its files change (a model
retrained or exported into the same folder, or lifted in place as the llama-server tests do)."""

from __future__ import annotations

import os
import shutil

import numpy as np

from lmmiqa.backends.base import clear_backend_cache, create_backend, folder_fingerprint
from lmmiqa.testing import make_image
from lmmiqa.types import Prompt


def test_fingerprint_of_hub_ids_urls_and_missing_paths_is_empty(tmp_path):
    assert folder_fingerprint("Qwen/Qwen2.5-VL-7B-Instruct") == ()
    assert folder_fingerprint("http://127.0.0.1:8000/v1#m") == ()
    assert folder_fingerprint(str(tmp_path / "absent")) == ()
    assert folder_fingerprint(None) == ()


def test_a_rewritten_folder_is_loaded_again(tiny_model_path, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "m"
    shutil.copytree(tiny_model_path(), model)
    clear_backend_cache()
    try:
        first = create_backend("transformers", str(model), device="cpu")
        assert create_backend("transformers", str(model), device="cpu") is first  # unchanged: shared
        prompt = Prompt.simple([make_image(32, 32, seed=1), "How is it?"], answer_prefix="The quality is")
        before = first.last_logits([prompt])
        weights = next(model.glob("*.safetensors"))
        tensors = load_file(str(weights))
        name = next(n for n in tensors if n.endswith("lm_head.weight") or n.endswith("embed_tokens.weight"))
        tensors[name] = tensors[name] + torch.randn_like(tensors[name])
        save_file(tensors, str(weights), metadata={"format": "pt"})
        st = os.stat(weights)
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a coarse clock cannot hide the write
        second = create_backend("transformers", str(model), device="cpu")
        assert second is not first
        assert not np.allclose(second.last_logits([prompt]), before)
        assert np.allclose(first.last_logits([prompt]), before)  # the old copy still serves whoever holds it
        assert create_backend("transformers", str(model), device="cpu") is second
    finally:
        clear_backend_cache()
