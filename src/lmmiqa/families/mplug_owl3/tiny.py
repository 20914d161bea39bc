"""Tiny random-weight mPLUG-Owl3 checkpoints in the published folder layout (tests, examples; no download).

:func:`make_tiny_checkpoint` writes what a downloaded mPLUG/mPLUG-Owl3-7B-240728 folder holds — ``config.json``
(``model_type: "mplugowl3"``, the published ``architectures`` and ``auto_map`` to remote code that lmmiqa never
runs), ``generation_config.json`` (the published one), the weights under their published names (one safetensors
file, or shards with an index) and the tokenizer files (Qwen2's BPE + the inferred special tokens,
:mod:`.tokenizer`) — for a shrunken config (decoder hidden 64, 3 layers of which 2 hyper; SigLIP hidden 32, 3
layers, the real 384² input and patch 14; the real 151,851-token vocabulary).

Weights follow the recipe of the official parity run (``shared/data/official/mplug-owl3-7b-240728/parity``):
for every parameter ``name``, ``numpy.random.default_rng(crc32(name))`` draws ``1 + 0.1·N(0, 1)`` for norm weights
and ``0.05·N(0, 1)`` for everything else — deterministic and the same in the official code and here.
"""

from __future__ import annotations

import json
import os
import pathlib
import zlib
from typing import Any

from lmmiqa.errors import ConfigError

#: The shrunken config (published vocabulary, vision input and patch; small widths and depths).
TINY_CONFIG: dict[str, Any] = {
    "vocab_size": 151851,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hyper_layers": [1, 3],
    "max_position_embeddings": 4096,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_config": {
        "hidden_size": 32,
        "image_size": 384,
        "intermediate_size": 64,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "patch_size": 14,
    },
}

#: What the published config.json says about the remote code (kept so the folder looks like the published one).
PUBLISHED_ARCHITECTURES = ["mPLUGOwl3Model"]
PUBLISHED_AUTO_MAP = {
    "AutoConfig": "configuration_mplugowl3.mPLUGOwl3Config",
    "AutoModel": "modeling_mplugowl3.mPLUGOwl3Model",
    "AutoModelForCausalLM": "modeling_mplugowl3.mPLUGOwl3Model",
}
#: The published generation_config.json.
PUBLISHED_GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
}


def recipe_value(name: str, shape: tuple[int, ...]) -> Any:
    """The parity recipe's value of parameter ``name`` (float32 numpy array)."""
    import numpy as np

    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if "norm" in name and name.endswith("weight"):
        arr = 1 + 0.1 * rng.standard_normal(shape)
    else:
        arr = 0.05 * rng.standard_normal(shape)
    return arr.astype(np.float32)


def apply_recipe(model: Any) -> Any:
    """Set every parameter of ``model`` to :func:`recipe_value` of its name (in place; returns the model)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.from_numpy(recipe_value(name, tuple(param.shape))).to(param.dtype))
    return model


def build_tiny_model(config: dict[str, Any] | None = None, attn_implementation: str = "sdpa") -> Any:
    """The tiny model in memory (recipe weights, float32, eval mode)."""
    from lmmiqa.families.mplug_owl3.configuration import MplugOwl3Config
    from lmmiqa.families.mplug_owl3.modeling import MplugOwl3ForConditionalGeneration

    cfg = MplugOwl3Config(**(config or TINY_CONFIG))
    cfg._attn_implementation = attn_implementation
    model = MplugOwl3ForConditionalGeneration(cfg)
    return apply_recipe(model).float().eval()


def _qwen2_files(tokenizer_from: str | os.PathLike[str] | None) -> tuple[pathlib.Path, pathlib.Path]:
    if tokenizer_from is None:
        from lmmiqa.testing import shared_hf_folder

        found = shared_hf_folder("Qwen2.5-VL-7B-Instruct")
        if found is None:
            raise ConfigError(
                "make_tiny_checkpoint needs Qwen2's vocab.json and merges.txt: pass tokenizer_from=<a Qwen2 / Qwen2.5-VL "
                "checkpoint folder> (or set LMMIQA_HF_FILES)"
            )
        tokenizer_from = found
    folder = pathlib.Path(tokenizer_from)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not vocab.is_file() or not merges.is_file():
        raise ConfigError(f"{folder} has no vocab.json and merges.txt (Qwen2's BPE files)")
    return vocab, merges


def make_tiny_checkpoint(
    path: str | os.PathLike[str],
    *,
    tokenizer_from: str | os.PathLike[str] | None = None,
    config: dict[str, Any] | None = None,
    max_shard_size: str | int | None = None,
    safe_serialization: bool = True,
) -> pathlib.Path:
    """Write a tiny mPLUG-Owl3 checkpoint in the published folder layout (module docstring).

    Args:
        path: output folder (created).
        tokenizer_from: a folder with Qwen2's ``vocab.json`` and ``merges.txt`` (default: the shared
            Qwen2.5-VL-7B-Instruct files, :func:`lmmiqa.testing.shared_hf_folder`).
        config: the model config (default :data:`TINY_CONFIG`).
        max_shard_size: shard the weights (e.g. ``"1MB"``) with an index file, as the published checkpoint is.
        safe_serialization: safetensors (default) or ``pytorch_model*.bin``.

    Returns:
        ``path``; it loads with ``lmmiqa score --model PATH`` and ``create_scorer(..., model=PATH)``.
    """
    from lmmiqa.families.mplug_owl3.tokenizer import derive_tokenizer

    vocab, merges = _qwen2_files(tokenizer_from)
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(config)
    kwargs: dict[str, Any] = {"safe_serialization": safe_serialization}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out, **kwargs)
    cfg_path = out / "config.json"
    saved = json.loads(cfg_path.read_text())
    saved["architectures"] = PUBLISHED_ARCHITECTURES
    saved["auto_map"] = PUBLISHED_AUTO_MAP
    cfg_path.write_text(json.dumps(saved, indent=2))
    (out / "generation_config.json").write_text(json.dumps(PUBLISHED_GENERATION_CONFIG, indent=2))
    derive_tokenizer(vocab, merges, out=out)
    return out


__all__ = ["TINY_CONFIG", "apply_recipe", "build_tiny_model", "make_tiny_checkpoint", "recipe_value"]
