"""mPLUG-Owl2's visual side: the ViT-L/14 encoder and the visual abstractor (lmmiqa's implementation).

* **Vision encoder** — a CLIP-style pre-norm ViT: a 14×14 patch convolution (no bias), a class token, learned
  position embeddings and a LayerNorm before the blocks; each block is LayerNorm → self-attention (one fused
  ``query_key_value`` projection whose output is laid out per head as ``[q, k, v]``) → LayerNorm → MLP with
  QuickGELU; a LayerNorm after the blocks. 448² input → 1 + 32² tokens.
* **Visual abstractor** — ``num_learnable_queries`` (64) learned queries cross-attend, layer by layer, to the
  LayerNorm'ed queries concatenated with the LayerNorm'ed image tokens. Keys carry fixed sine-cosine position
  embeddings (1-D for the queries, 2-D over the 32×32 patch grid plus a zero row for the class token); queries
  carry the 1-D ones; values carry none. The residual starts from the normalised queries; the feed-forward block
  is a SwiGLU with a LayerNorm before its output projection. The result is projected to the language model's width
  (``visual_fc``) and followed by one learned end-of-image embedding (``vit_eos``): 65 positions per image.

Module and parameter names are those of the published state dict (``model.vision_model.*``,
``model.visual_abstractor.*``), so the published files load by their own names; the position embeddings are
persistent buffers there (``q_pos_embed``, ``k_pos_embed``), kept persistent here and recomputed on
initialisation. Attention runs through transformers' attention functions (``eager``, ``sdpa``,
``flash_attention_2``), non-causal and unmasked.

Reference: Ye et al., "mPLUG-Owl2" (2023), §3.1 (vision encoder, visual abstractor).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.activations import ACT2FN

from lmmiqa.families.mplug_owl2.attention import attention_function, implementation_of
from lmmiqa.families.mplug_owl2.configuration import SubConfig


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """Sine-cosine embeddings ``[len(positions), dim]`` (first half sines, second half cosines), float32 throughout
    (frequencies ``10000^(-2i/dim)``), as in MAE's position embeddings."""
    if dim % 2:
        raise ValueError(f"sine-cosine embeddings need an even width, got {dim}")
    freq = np.arange(dim // 2, dtype=np.float32)
    freq /= dim / 2.0
    freq = 1.0 / 10000**freq
    angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float32), freq)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid: int, with_cls: bool) -> np.ndarray:
    """2-D sine-cosine embeddings over a ``grid``×``grid`` patch grid ``[grid², dim]`` (half the width for each
    axis; the first half encodes the column, the second the row, in row-major patch order), with a leading zero row
    for the class token when ``with_cls``."""
    if dim % 2:
        raise ValueError(f"sine-cosine embeddings need an even width, got {dim}")
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    if with_cls:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return emb


def _attention(module: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, dropout: float) -> torch.Tensor:
    """Non-causal, unmasked attention through transformers' attention function of the model's
    ``attn_implementation`` (read from the root config at call time); returns ``[B, L, heads, d]``."""
    fn = attention_function(implementation_of(module.root_config))
    out, _ = fn(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=False)
    return out


class MPLUGOwl2VisionEmbeddings(nn.Module):
    def __init__(self, config: SubConfig) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embed = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                     stride=config.patch_size, bias=False)
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Parameter(torch.zeros(1, self.num_patches + 1, config.hidden_size))
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(patches.shape[0], 1, -1).to(patches.dtype)
        x = torch.cat([cls, patches], dim=1)
        x = x + self.position_embedding[:, : x.shape[1]].to(patches.dtype)
        return self.pre_layernorm(x)


class MPLUGOwl2VisionAttention(nn.Module):
    is_causal = False

    def __init__(self, config: SubConfig, root_config: Any) -> None:
        super().__init__()
        self.root_config = root_config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        if self.head_dim * self.num_heads != config.hidden_size:
            raise ValueError(f"vision hidden_size {config.hidden_size} is not a multiple of {self.num_heads} heads")
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.dropout = float(config.attention_dropout)
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, n, d = hidden_states.shape
        # the fused projection is laid out per head: [head][q, k, v][head_dim]
        qkv = self.query_key_value(hidden_states).reshape(b, n, self.num_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        out = _attention(self, qkv[0], qkv[1], qkv[2], self.scaling, self.dropout if self.training else 0.0)
        return self.dense(out.reshape(b, n, d))


class MPLUGOwl2VisionMLP(nn.Module):
    def __init__(self, config: SubConfig) -> None:
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MPLUGOwl2VisionLayer(nn.Module):
    def __init__(self, config: SubConfig, root_config: Any) -> None:
        super().__init__()
        # registration order = the published state dict's order
        self.self_attn = MPLUGOwl2VisionAttention(config, root_config)
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MPLUGOwl2VisionMLP(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class MPLUGOwl2VisionEncoder(nn.Module):
    def __init__(self, config: SubConfig, root_config: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList([MPLUGOwl2VisionLayer(config, root_config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x


class MPLUGOwl2VisionModel(nn.Module):
    """The ViT: ``pixel_values [B, 3, H, W]`` → ``[B, 1 + (H/14)², hidden]`` (after the final LayerNorm)."""

    def __init__(self, config: SubConfig, root_config: Any) -> None:
        super().__init__()
        self.config = config
        self.embeddings = MPLUGOwl2VisionEmbeddings(config)
        self.encoder = MPLUGOwl2VisionEncoder(config, root_config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


# ------------------------------------------------------------------------------------------------ abstractor


class MPLUGOwl2AbstractorMLP(nn.Module):
    """SwiGLU feed-forward with a LayerNorm before the output projection."""

    def __init__(self, config: SubConfig) -> None:
        super().__init__()
        self.act = nn.SiLU()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_ln = nn.LayerNorm(config.intermediate_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(self.act(self.w1(x)) * self.w3(x)))


class MPLUGOwl2AbstractorAttention(nn.Module):
    """Multi-head cross attention of the queries over [queries; image tokens], with fixed sine-cosine position
    embeddings added to the keys (and to the queries), not to the values."""

    is_causal = False

    def __init__(self, config: SubConfig, root_config: Any) -> None:
        super().__init__()
        self.root_config = root_config
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"abstractor hidden_size {config.hidden_size} is not a multiple of {config.num_attention_heads} heads"
            )
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.dropout = float(config.attention_probs_dropout_prob)
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.encoder_hidden_size, config.hidden_size)
        self.value = nn.Linear(config.encoder_hidden_size, config.hidden_size)
        self.num_queries = int(config.num_learnable_queries)
        self.grid_size = int(config.grid_size)
        self.register_buffer("q_pos_embed", self.query_positions(config.hidden_size, self.num_queries), persistent=True)
        self.register_buffer("k_pos_embed", self.key_positions(config.hidden_size, self.grid_size), persistent=True)

    @staticmethod
    def query_positions(dim: int, n: int) -> torch.Tensor:
        return torch.from_numpy(sincos_1d(dim, np.arange(n, dtype=np.float32))).float()

    @staticmethod
    def key_positions(dim: int, grid: int) -> torch.Tensor:
        return torch.from_numpy(sincos_2d(dim, grid, with_cls=True)).float()

    def reset_positions(self) -> None:
        """Recompute the fixed position embeddings (they are deterministic)."""
        with torch.no_grad():
            dim = self.q_pos_embed.shape[-1]
            self.q_pos_embed.copy_(self.query_positions(dim, self.num_queries))
            self.k_pos_embed.copy_(self.key_positions(dim, self.grid_size))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, queries: torch.Tensor, keys_values: torch.Tensor) -> torch.Tensor:
        dtype = queries.dtype
        pos = torch.cat([self.q_pos_embed, self.k_pos_embed], dim=0).unsqueeze(0).to(dtype)
        if keys_values.shape[1] != pos.shape[1]:
            raise ValueError(
                f"the abstractor's key position embeddings cover {pos.shape[1] - self.num_queries} image tokens "
                f"(grid_size {self.grid_size}), the vision encoder gave {keys_values.shape[1] - self.num_queries}"
            )
        k = self._split(self.key(keys_values + pos))
        v = self._split(self.value(keys_values))
        q = self._split(self.query(queries + self.q_pos_embed.unsqueeze(0).to(dtype)))
        out = _attention(self, q, k, v, self.scaling, self.dropout if self.training else 0.0)
        return out.reshape(queries.shape[0], queries.shape[1], -1)


class MPLUGOwl2AbstractorOutput(nn.Module):
    def __init__(self, config: SubConfig) -> None:
        super().__init__()
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size)  # torch's default eps (1e-5), as published
        self.mlp = MPLUGOwl2AbstractorMLP(config)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        x = residual + self.out_proj(context)
        return x + self.mlp(self.norm2(x))


class MPLUGOwl2AbstractorCrossAttention(nn.Module):
    def __init__(self, config: SubConfig, root_config: Any) -> None:
        super().__init__()
        self.attention = MPLUGOwl2AbstractorAttention(config, root_config)
        self.output = MPLUGOwl2AbstractorOutput(config)
        self.norm1 = nn.LayerNorm(config.hidden_size)  # torch's default eps, as published
        self.normk = nn.LayerNorm(config.hidden_size)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        q = self.norm1(queries)
        kv = torch.cat([q, self.normk(image_tokens)], dim=1)
        return self.output(self.attention(q, kv), q)


class MPLUGOwl2AbstractorLayer(nn.Module):
    def __init__(self, config: SubConfig, root_config: Any) -> None:
        super().__init__()
        self.crossattention = MPLUGOwl2AbstractorCrossAttention(config, root_config)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.crossattention(queries, image_tokens)


class MPLUGOwl2AbstractorEncoder(nn.Module):
    def __init__(self, config: SubConfig, root_config: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList([MPLUGOwl2AbstractorLayer(config, root_config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                queries = torch.utils.checkpoint.checkpoint(layer, queries, image_tokens, use_reentrant=False)
            else:
                queries = layer(queries, image_tokens)
        return queries


class MPLUGOwl2VisualAbstractor(nn.Module):
    """Image tokens ``[B, 1 + 32², vision hidden]`` → language-model inputs ``[B, queries + 1, text hidden]``."""

    def __init__(self, config: SubConfig, language_hidden_size: int, root_config: Any) -> None:
        super().__init__()
        self.config = config
        self.encoder = MPLUGOwl2AbstractorEncoder(config, root_config)
        self.visual_fc = nn.Linear(config.hidden_size, language_hidden_size)
        self.query_embeds = nn.Parameter(torch.zeros(1, config.num_learnable_queries, config.hidden_size))
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, language_hidden_size))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        b = image_tokens.shape[0]
        queries = self.query_embeds.expand(b, -1, -1).to(image_tokens.dtype)
        out = self.visual_fc(self.encoder(queries, image_tokens))
        return torch.cat([out, self.vit_eos.expand(b, -1, -1).to(out.dtype)], dim=1)


__all__ = [
    "MPLUGOwl2VisionModel",
    "MPLUGOwl2VisualAbstractor",
    "sincos_1d",
    "sincos_2d",
]
