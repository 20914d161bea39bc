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
* :func:`save_qscorer_release` — a tiny Q-Scorer release in the layout its training script writes (``config.json``,
  ``adapter_config.json`` + ``adapter_model.bin`` for LoRA on ``q_proj`` and ``v_proj.multiway.1``,
  ``non_lora_trainables.bin`` with every non-LoRA tensor under ``base_model.model.``: the embeddings resized by the
  five score tokens, the ``deepmlp`` head, a fine-tuned vision model, abstractor and LM head). The tensor names
  follow ``shared/data/official/q-scorer/derived`` — reconstructed from ``train_mem.py``, not the release's own
  files, which could not be obtained.
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


def tiny_model(config: dict[str, Any] | None = None, *, parity_weights: bool = True, image_gain: float = 1.0) -> Any:
    """A tiny :class:`~lmmiqa.families.mplug_owl2.modeling.MPLUGOwl2ForConditionalGeneration` (fp32, eval).

    ``image_gain`` scales the abstractor's output projection and end-of-image embedding after the parity weights:
    with the parity recipe alone images move the level logits by ~1e-4, so tests that must tell images apart
    (batches, padding) use a gain of 20.
    """
    import torch

    from lmmiqa.families.mplug_owl2.configuration import MPLUGOwl2Config
    from lmmiqa.families.mplug_owl2.modeling import MPLUGOwl2ForConditionalGeneration

    model = MPLUGOwl2ForConditionalGeneration(MPLUGOwl2Config(**(config or TINY_CONFIG))).eval()
    if not parity_weights:
        return model
    fill_parity_weights(model)
    if image_gain != 1.0:
        abstractor = model.model.visual_abstractor
        with torch.no_grad():
            for p in (abstractor.visual_fc.weight, abstractor.visual_fc.bias, abstractor.vit_eos):
                p.mul_(float(image_gain))
    return model


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


#: Q-Scorer's score tokens, added in this order after the LLaMA-2 vocabulary (ids 32000..32004)
SCORE_TOKENS = ("<score1>", "<score2>", "<score3>", "<score4>", "<score5>")


def release_value(name: str, shape: tuple[int, ...], scale: float = 0.02) -> np.ndarray:
    """A tiny release's deterministic values for tensor ``name`` (``default_rng(crc32("qscorer:" + name))``)."""
    rng = np.random.default_rng(zlib.crc32(("qscorer:" + name).encode()))
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def qscorer_release_tensors(base_model: Any, *, rank: int = 4, head_dims: tuple[int, ...] | None = None
                            ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The tensors of a tiny Q-Scorer release on ``base_model`` (a tiny mPLUG-Owl2), by recipe.

    Returns:
        ``(adapter, non_lora, targets)``: the LoRA tensors (``base_model.model.<module>.lora_A.weight`` ...), every
        non-LoRA tensor (``base_model.model.<published name>``, embeddings resized to vocab + 5, the ``deepmlp``
        head, vision model / abstractor / LM head moved off the base values as fine-tuning would) and the LoRA
        target module names.
    """
    import torch

    cfg = base_model.config
    hidden = int(cfg.hidden_size)
    dims = tuple(head_dims or (hidden // 2, hidden // 4))
    base = {k: v.detach().cpu().float() for k, v in base_model.state_dict().items()}
    n_old, n_new = base["model.embed_tokens.weight"].shape[0], len(SCORE_TOKENS)
    non_lora: dict[str, Any] = {}
    for name, value in base.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            rows = value.shape[0] + n_new
            out = torch.zeros((rows, value.shape[1]))
            out[:n_old] = value
            if name == "lm_head.weight":  # output rows: the mean (train_mem.py), then trained in full
                out[n_old:] = value.mean(dim=0, keepdim=True)
                out = out + torch.from_numpy(release_value(name, tuple(out.shape), 0.01))
            else:  # input rows: random (resize_token_embeddings), not trained
                out[n_old:] = torch.from_numpy(release_value(name + ":new", (n_new, value.shape[1])))
            value = out
        elif name.startswith(("model.vision_model.", "model.visual_abstractor.")) and not name.endswith("_pos_embed"):
            value = value + torch.from_numpy(release_value(name, tuple(value.shape), 0.01))
        non_lora["base_model.model." + name] = value
    widths = (hidden, *dims)
    for i in range(len(dims)):
        for part, shape in (("weight", (widths[i + 1], widths[i])), ("bias", (widths[i + 1],))):
            key = f"deepmlp.model.{i}.linear.{part}"
            non_lora["base_model.model." + key] = torch.from_numpy(release_value(key, shape, 0.2))
    for part, shape in (("weight", (1, dims[-1])), ("bias", (1,))):
        key = f"deepmlp.output_layer.{part}"
        non_lora["base_model.model." + key] = torch.from_numpy(release_value(key, shape, 0.2))
    non_lora["base_model.model.deepmlp.output_layer.bias"] += 3.0  # scores around the middle of [0, 5]
    targets: list[str] = []
    adapter: dict[str, Any] = {}
    for i in range(int(cfg.num_hidden_layers)):
        for module, width_out in ((f"model.layers.{i}.self_attn.q_proj", hidden),
                                  (f"model.layers.{i}.self_attn.v_proj.multiway.1",
                                   int(cfg.num_key_value_heads) * int(cfg.head_dim))):
            targets.append(module)
            a, b = f"base_model.model.{module}.lora_A.weight", f"base_model.model.{module}.lora_B.weight"
            adapter[a] = torch.from_numpy(release_value(a, (rank, hidden), 0.1))
            adapter[b] = torch.from_numpy(release_value(b, (width_out, rank), 0.1))
    return adapter, non_lora, targets


def save_qscorer_release(base_model: Any, folder: str | os.PathLike[str], *, rank: int = 4, alpha: int = 8,
                         base_model_name: str = "MAGAer13/mplug-owl2-llama2-7b") -> Path:
    """Write a tiny Q-Scorer release (see :func:`qscorer_release_tensors`) in the training script's layout."""
    import torch

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    adapter, non_lora, targets = qscorer_release_tensors(base_model, rank=rank)
    torch.save(adapter, out / "adapter_model.bin")
    torch.save(non_lora, out / "non_lora_trainables.bin")
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.05,
        "bias": "none", "target_modules": sorted(targets), "base_model_name_or_path": base_model_name,
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "revision": None, "layers_to_transform": None, "layers_pattern": None,
    }, indent=2))
    cfg = {k: v for k, v in published_config(TINY_CONFIG).items() if k != "auto_map"}
    cfg.update(vocab_size=int(base_model.config.vocab_size) + len(SCORE_TOKENS), weight_desp=1.0,
               weight_next_token=0.05, image_aspect_ratio="pad", image_grid_pinpoints=None,
               tune_visual_abstractor=True, freeze_vision_model=False, visual_abstractor_lr=None,
               use_cache=True, torch_dtype="bfloat16", _name_or_path=base_model_name)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


__all__ = [
    "PUBLISHED_AUTO_MAP",
    "SCORE_TOKENS",
    "TINY_CONFIG",
    "fill_parity_weights",
    "parity_value",
    "published_config",
    "qscorer_release_tensors",
    "release_value",
    "save_published_layout",
    "save_qscorer_release",
    "tiny_model",
]
