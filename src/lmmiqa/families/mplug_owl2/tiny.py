"""Tiny random-weight mPLUG-Owl2 checkpoints for tests (no download), in the published folder layout.

* :data:`TINY_CONFIG` — the tiny configuration of the parity fixture made with the official code
  (``shared/data/official/one-align/parity``): text hidden 64, 2 layers, 4 heads; ViT hidden 32, 2 layers, 448²
  input; abstractor hidden 32, 2 layers, 64 queries; the real LLaMA-2 vocabulary (32000).
* :func:`fill_parity_weights` — the fixture's deterministic weights: each parameter drawn from numpy's
  ``default_rng(crc32(name))``, ``1 + 0.1·N`` for norm weights (names ending ``norm.weight`` or
  ``layernorm.weight``), ``0.05·N`` otherwise; buffers as constructed. Same names → same weights in any
  implementation.
* :func:`save_published_layout` — a checkpoint folder as the published ones look: ``config.json`` in the published
  code's keys with an ``auto_map`` to the remote code (which lmmiqa ignores), the weights sharded over
  ``pytorch_model-0000i-of-0000N.bin`` with ``pytorch_model.bin.index.json``, the tokenizer files and the
  ``preprocessor_config.json`` copied from where they are given.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

TINY_CONFIG: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "visual_config": {
        "visual_model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "image_size": 448, "patch_size": 14, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-6},
        "visual_abstractor": {"num_learnable_queries": 64, "hidden_size": 32, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "intermediate_size": 64, "encoder_hidden_size": 32,
                              "grid_size": 32, "layer_norm_eps": 1e-6},
    },
}

#: the remote-code entry points the published config.json names (ignored by lmmiqa)
PUBLISHED_AUTO_MAP = {
    "AutoConfig": "configuration_mplug_owl2.MPLUGOwl2Config",
    "AutoModel": "modeling_mplug_owl2.MPLUGOwl2LlamaForCausalLM",
    "AutoModelForCausalLM": "modeling_mplug_owl2.MPLUGOwl2LlamaForCausalLM",
}
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


def parity_value(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The fixture's value of parameter ``name`` (float32)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    is_norm = name.endswith("norm.weight") or name.endswith("layernorm.weight") or (".ln" in name and name.endswith(".weight"))
    arr = 1.0 + 0.1 * rng.standard_normal(shape) if is_norm else 0.05 * rng.standard_normal(shape)
    return arr.astype(np.float32)


def fill_parity_weights(model: Any) -> Any:
    """Overwrite every parameter of ``model`` with :func:`parity_value` (by its state-dict name)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.from_numpy(parity_value(name, tuple(param.shape))))
    return model


def tiny_model(config: dict[str, Any] | None = None, *, parity_weights: bool = True) -> Any:
    """A tiny :class:`~lmmiqa.families.mplug_owl2.modeling.MPLUGOwl2ForConditionalGeneration` (fp32, eval)."""
    from lmmiqa.families.mplug_owl2.configuration import MPLUGOwl2Config
    from lmmiqa.families.mplug_owl2.modeling import MPLUGOwl2ForConditionalGeneration

    model = MPLUGOwl2ForConditionalGeneration(MPLUGOwl2Config(**(config or TINY_CONFIG))).eval()
    return fill_parity_weights(model) if parity_weights else model


def published_config(config: dict[str, Any], *, dtype: str = "float32", **extra: Any) -> dict[str, Any]:
    """``config.json`` as the published code writes it (LLaMA keys, ``visual_config``, ``auto_map``)."""
    out = {
        "architectures": ["MPLUGOwl2LlamaForCausalLM"],
        "auto_map": dict(PUBLISHED_AUTO_MAP),
        "model_type": "mplug_owl2",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "transformers_version": "4.36.1",
        "use_cache": True,
    }
    out.update(json.loads(json.dumps(config)))
    out.update(extra)
    return out


def save_published_layout(
    model: Any,
    folder: str | os.PathLike[str],
    *,
    tokenizer_dir: str | os.PathLike[str],
    preprocessor_config: str | os.PathLike[str],
    config: dict[str, Any] | None = None,
    shards: int = 2,
    include_inv_freq: bool = False,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a published mPLUG-Owl2 checkpoint folder (see the module docstring).

    Args:
        model: the model whose state dict is written (published names).
        folder: output folder (created).
        tokenizer_dir: folder with the LLaMA-2 tokenizer files (``tokenizer.model`` ...), copied.
        preprocessor_config: the CLIP ``preprocessor_config.json`` to copy (one-align's, old layout).
        config: the config values (default :data:`TINY_CONFIG`).
        shards: number of ``pytorch_model-*.bin`` files.
        include_inv_freq: also store ``model.layers.N.self_attn.rotary_emb.inv_freq`` (as older checkpoints do).
        state_dict: write this instead of ``model.state_dict()``.
    """
    import torch

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in (state_dict or model.state_dict()).items()}
    if include_inv_freq:
        rot = model.model.rotary_emb.inv_freq.detach().cpu()
        for i in range(model.config.num_hidden_layers):
            sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = rot.clone()
    names = list(sd)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(shards):
        part = names[s * per : (s + 1) * per]
        fname = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        torch.save({k: sd[k] for k in part}, out / fname)
        for k in part:
            weight_map[k] = fname
            total += sd[k].numel() * sd[k].element_size()
    (out / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    dtype = str(next(iter(sd.values())).dtype).replace("torch.", "")
    (out / "config.json").write_text(json.dumps(published_config(config or TINY_CONFIG, dtype=dtype), indent=2))
    tok = Path(tokenizer_dir)
    for name in TOKENIZER_FILES:
        if (tok / name).is_file():
            shutil.copy(tok / name, out / name)
    shutil.copy(preprocessor_config, out / "preprocessor_config.json")
    return out


__all__ = [
    "PUBLISHED_AUTO_MAP",
    "TINY_CONFIG",
    "fill_parity_weights",
    "parity_value",
    "published_config",
    "save_published_layout",
    "tiny_model",
]
