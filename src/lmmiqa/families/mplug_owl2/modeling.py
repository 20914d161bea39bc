"""mPLUG-Owl2 on current transformers: the modality-adaptive LLaMA-2 decoder and the full image-text model.

The decoder is LLaMA-2 (transformers' ``LlamaRMSNorm``, ``LlamaMLP``, rotary embeddings and attention functions)
with mPLUG-Owl2's *modality-adaptive module*: the key and value projections and both layer norms of every layer
come in two copies, ``multiway.0`` for text positions and ``multiway.1`` for image positions (queries, the output
projection and the MLP are shared). Images enter as follows: the processor writes ``num_image_tokens`` (65)
placeholder ids (``config.image_token_id``, the published code's -200) per image into ``input_ids``; the model
encodes ``pixel_values`` with the ViT and the visual abstractor (:mod:`.vision`) and puts the 65 feature vectors at
those positions, which are also the positions that use the ``multiway.1`` modules. Positions follow the attention
mask (left padding gives the same positions as an unpadded prompt), so a padded batch equals one-at-a-time scoring.

Module and parameter names are the published state dict's (``model.embed_tokens``, ``model.layers.N.self_attn.
k_proj.multiway.0``, ``model.vision_model.*``, ``model.visual_abstractor.*``, ``lm_head``): the published files
(sharded ``pytorch_model-*.bin`` + index, or safetensors) load by their own names, and ``save_pretrained`` writes
them. A rotary ``inv_freq`` buffer found in older checkpoints is ignored (it is recomputed).

Reference: Ye et al., "mPLUG-Owl2" (2023), §3.2 (modality-adaptive module); Q-Align (Wu et al., 2023) ships it as
one-align. This is lmmiqa's own implementation, checked against the official code on tiny random weights
(``tests/families/test_mplug_owl2_parity.py``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, apply_rotary_pos_emb

from lmmiqa.families.mplug_owl2.attention import attention_function, implementation_of
from lmmiqa.families.mplug_owl2.configuration import MPLUGOwl2Config
from lmmiqa.families.mplug_owl2.vision import (
    MPLUGOwl2AbstractorAttention,
    MPLUGOwl2VisionEmbeddings,
    MPLUGOwl2VisionModel,
    MPLUGOwl2VisualAbstractor,
)

try:  # transformers >= 4.52: gradient checkpointing handled by the layer class
    from transformers.modeling_layers import GradientCheckpointingLayer as _LayerBase
except ImportError:  # pragma: no cover - older transformers
    _LayerBase = nn.Module  # type: ignore[assignment,misc]


class MultiwayNetwork(nn.Module):
    """Two copies of a module (``multiway.0``: text positions, ``multiway.1``: image positions); each position goes
    through the copy of its modality (only the positions of that modality are computed)."""

    def __init__(self, make: Any, n: int = 2) -> None:
        super().__init__()
        self.multiway = nn.ModuleList([make() for _ in range(n)])

    def forward(self, x: torch.Tensor, modality: torch.Tensor | None) -> torch.Tensor:
        if modality is None or not bool(modality.any()):
            return self.multiway[0](x)
        if bool(modality.all()):
            return self.multiway[1](x)
        visual = modality.bool()
        text_out = self.multiway[0](x[~visual])
        image_out = self.multiway[1](x[visual])
        out = text_out.new_empty((*x.shape[:-1], text_out.shape[-1]))
        out[~visual] = text_out
        out[visual] = image_out.to(text_out.dtype)
        return out


class MPLUGOwl2Rotary(nn.Module):
    """LLaMA's rotary position embedding (inverse frequencies ``theta^(-2i/d)``, cos/sin computed in float32);
    ``linear`` scaling divides the positions by the factor."""

    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        self.theta, self.kind, self.factor = config.rope_settings()
        self.dim = int(config.head_dim)
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim))

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = position_ids.float()
        if self.kind == "linear":
            pos = pos / self.factor
        freqs = pos[..., None] * self.inv_freq.to(device=x.device, dtype=torch.float32)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class MPLUGOwl2Attention(nn.Module):
    """LLaMA attention with modality-adaptive key/value projections."""

    is_causal = True

    def __init__(self, config: MPLUGOwl2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = int(config.head_dim)
        self.num_heads = int(config.num_attention_heads)
        self.num_key_value_heads = int(config.num_key_value_heads)
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = float(config.attention_dropout)
        bias = bool(config.attention_bias)
        kv_out = self.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = MultiwayNetwork(lambda: nn.Linear(config.hidden_size, kv_out, bias=bias))
        self.v_proj = MultiwayNetwork(lambda: nn.Linear(config.hidden_size, kv_out, bias=bias))
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        modality: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Any = None,
    ) -> torch.Tensor:
        b, n, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, n, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states, modality).view(b, n, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states, modality).view(b, n, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        fn = attention_function(implementation_of(self.config))
        out, _ = fn(self, q, k, v, attention_mask, dropout=self.attention_dropout if self.training else 0.0,
                    scaling=self.scaling)
        return self.o_proj(out.reshape(b, n, -1).contiguous())


class MPLUGOwl2DecoderLayer(_LayerBase):
    def __init__(self, config: MPLUGOwl2Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = MPLUGOwl2Attention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = MultiwayNetwork(lambda: LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps))
        self.post_attention_layernorm = MultiwayNetwork(
            lambda: LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        modality: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        residual = hidden_states
        x = self.input_layernorm(hidden_states, modality)
        x = residual + self.self_attn(x, modality, position_embeddings, attention_mask, cache)
        residual = x
        return residual + self.mlp(self.post_attention_layernorm(x, modality))


def _init_module(module: nn.Module, std: float) -> None:
    """Initialise lmmiqa's own mPLUG-Owl2 modules (random weights; loading replaces them). Uses transformers'
    ``initialization`` functions where they exist (they skip tensors already loaded from a checkpoint)."""
    try:
        from transformers import initialization as init
    except ImportError:  # pragma: no cover - older transformers
        init = nn.init
    if isinstance(module, MPLUGOwl2VisionEmbeddings):
        init.normal_(module.cls_token, mean=0.0, std=std)
        init.normal_(module.position_embedding, mean=0.0, std=std)
    elif isinstance(module, MPLUGOwl2VisualAbstractor):
        init.normal_(module.query_embeds, mean=0.0, std=std)
        init.normal_(module.vit_eos, mean=0.0, std=std)
    elif isinstance(module, MPLUGOwl2AbstractorAttention):
        dim = module.q_pos_embed.shape[-1]
        q_pos = module.query_positions(dim, module.num_queries).to(module.q_pos_embed.device)
        k_pos = module.key_positions(dim, module.grid_size).to(module.k_pos_embed.device)
        copy = getattr(init, "copy_", None)
        if copy is not None:
            copy(module.q_pos_embed, q_pos)
            copy(module.k_pos_embed, k_pos)
        else:  # pragma: no cover
            with torch.no_grad():
                module.q_pos_embed.copy_(q_pos)
                module.k_pos_embed.copy_(k_pos)
    elif isinstance(module, MPLUGOwl2Rotary):
        inv = module.compute_inv_freq().to(module.inv_freq.device)
        copy = getattr(init, "copy_", None)
        if copy is not None:
            copy(module.inv_freq, inv)
        else:  # pragma: no cover
            with torch.no_grad():
                module.inv_freq.copy_(inv)


class MPLUGOwl2PreTrainedModel(PreTrainedModel):
    config_class = MPLUGOwl2Config
    config: MPLUGOwl2Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MPLUGOwl2DecoderLayer", "MPLUGOwl2VisionLayer", "MPLUGOwl2AbstractorLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _supports_cache_class = True
    #: older checkpoints store the rotary inverse frequencies; they are recomputed, never loaded
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def _init_weights(self, module: nn.Module) -> None:
        std = float(getattr(self.config, "initializer_range", 0.02) or 0.02)
        if isinstance(module, (MPLUGOwl2VisionEmbeddings, MPLUGOwl2VisualAbstractor, MPLUGOwl2AbstractorAttention,
                               MPLUGOwl2Rotary)):
            _init_module(module, std)
            if not isinstance(module, MPLUGOwl2AbstractorAttention):
                return
        super()._init_weights(module)


def _cache_field(output_cls: type, cache: Any) -> dict[str, Any]:
    """The output's cache field: ``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier)."""
    fields = getattr(output_cls, "__dataclass_fields__", {})
    return {"cache": cache} if "cache" in fields else {"past_key_values": cache}


def output_cache(out: Any) -> Any:
    """The KV cache of a model output (``cache`` or ``past_key_values``, by transformers version)."""
    fields = getattr(type(out), "__dataclass_fields__", {})
    return getattr(out, "cache", None) if "cache" in fields else getattr(out, "past_key_values", None)


def _positions(attention_mask: torch.Tensor | None, past: int, length: int, batch: int, device: Any) -> torch.Tensor:
    """Position ids of the new positions: counted over the attended positions of each row (left padding does not
    shift them), else ``past .. past + length - 1``."""
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] == past + length:
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.clamp(min=0)[:, past:]
    return torch.arange(past, past + length, device=device).unsqueeze(0).expand(batch, -1)


def _decoder_mask(attention_mask: torch.Tensor | None, batch: int, length: int, past: int, dtype: torch.dtype,
                  device: Any, implementation: str) -> torch.Tensor | None:
    """The attention mask the attention function wants: a 2-D padding mask (or None) for flash attention; otherwise
    an additive ``[B, 1, L, past + L]`` causal + padding mask, or None for SDPA when nothing is padded (causal
    kernel)."""
    padded = attention_mask is not None and not bool(attention_mask.bool().all())
    if implementation.startswith("flash"):
        return attention_mask if padded else None
    if implementation == "sdpa" and not padded and past == 0:
        return None
    total = past + length
    q_pos = torch.arange(past, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None].expand(batch, 1, length, total)
    if padded:
        allowed = allowed & attention_mask[:, None, None, :total].bool().to(device)
    mask = torch.zeros((batch, 1, length, total), dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


class MPLUGOwl2Model(MPLUGOwl2PreTrainedModel):
    """The decoder with its vision encoder and abstractor (``model.*`` in the published state dict)."""

    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__(config)
        vision, abstractor = config.vision, config.abstractor
        patches = (int(vision.image_size) // int(vision.patch_size)) ** 2
        if patches != int(abstractor.grid_size) ** 2:
            from lmmiqa.errors import ConfigError

            raise ConfigError(
                f"mPLUG-Owl2 config: the vision encoder makes {patches} patches (image_size {vision.image_size}, "
                f"patch_size {vision.patch_size}) but the abstractor's grid_size {abstractor.grid_size} covers "
                f"{int(abstractor.grid_size) ** 2}"
            )
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([MPLUGOwl2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = MPLUGOwl2Rotary(config)
        self.vision_model = MPLUGOwl2VisionModel(vision, config)
        self.visual_abstractor = MPLUGOwl2VisualAbstractor(abstractor, config.hidden_size, config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 448, 448]`` → ``[N, num_image_tokens, hidden]`` (ViT, then abstractor)."""
        dtype = self.vision_model.embeddings.patch_embed.weight.dtype
        return self.visual_abstractor(self.vision_model(pixel_values.to(dtype)))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings with the image features at the image positions, and the modality of each position
        (True: image)."""
        image_positions = input_ids == self.config.image_token_index
        embeds = self.embed_tokens(input_ids.masked_fill(image_positions, 0))
        n_image = int(image_positions.sum())
        if n_image:
            if pixel_values is None:
                raise ValueError("input_ids hold image positions but no pixel_values were given")
            feats = self.image_features(pixel_values)
            if feats.shape[0] * feats.shape[1] != n_image:
                raise ValueError(
                    f"input_ids hold {n_image} image positions, {pixel_values.shape[0]} image(s) give "
                    f"{feats.shape[0] * feats.shape[1]} ({feats.shape[1]} per image)"
                )
            mask = image_positions.unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))
        return embeds, image_positions

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        modality_indicators: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds, modality = self.embed(input_ids, pixel_values)
        else:
            modality = modality_indicators.bool() if modality_indicators is not None else None
        use_cache = bool(self.config.use_cache if use_cache is None else use_cache)
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
        b, n = inputs_embeds.shape[:2]
        past = int(cache.get_seq_length()) if cache is not None else 0
        if position_ids is None:
            position_ids = _positions(attention_mask, past, n, b, inputs_embeds.device)
        mask = _decoder_mask(attention_mask, b, n, past, inputs_embeds.dtype, inputs_embeds.device,
                             implementation_of(self.config))
        hidden = inputs_embeds
        rope = self.rotary_emb(hidden, position_ids)
        collect = bool(self.config.output_hidden_states if output_hidden_states is None else output_hidden_states)
        states: list[torch.Tensor] = []
        for layer in self.layers:
            if collect:
                states.append(hidden)
            hidden = layer(hidden, modality, rope, mask, cache)
        hidden = self.norm(hidden)
        if collect:
            states.append(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=tuple(states) if collect else None,
            **_cache_field(BaseModelOutputWithPast, cache if use_cache else None),
        )


class MPLUGOwl2ForConditionalGeneration(MPLUGOwl2PreTrainedModel, GenerationMixin):
    """mPLUG-Owl2 for image-text-to-text: ``forward(input_ids, attention_mask, pixel_values, ...)`` → logits
    (``logits_to_keep`` keeps the last positions only); ``generate`` works as for any transformers decoder. The
    published code's ``images=`` keyword is accepted for ``pixel_values``."""

    _tied_weights_keys: Any = {}

    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__(config)
        self.model = MPLUGOwl2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``from_pretrained``, with the weight files of a local folder checked first and any tensor
        left missing after loading an error instead of random values (:mod:`.checkpoint`)."""
        from lmmiqa.families.mplug_owl2.checkpoint import check_folder, check_loading_info

        name = os.fspath(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        if isinstance(name, str) and os.path.isdir(name) and not kwargs.get("subfolder"):
            config = kwargs.get("config")
            if not isinstance(config, MPLUGOwl2Config):
                config = MPLUGOwl2Config.from_pretrained(name)
            check_folder(name, config, cls)
        want_info = bool(kwargs.pop("output_loading_info", False))
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        check_loading_info(str(name), info)
        return (model, info) if want_info else model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_decoder(self) -> MPLUGOwl2Model:
        return self.model

    @property
    def vision_model(self) -> nn.Module:
        return self.model.vision_model

    @property
    def visual_abstractor(self) -> nn.Module:
        return self.model.visual_abstractor

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        images: torch.Tensor | None = None,
        cache: Any = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values if pixel_values is not None else images,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            modality_indicators=kwargs.get("modality_indicators"),
        )
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)
            loss = nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            **_cache_field(CausalLMOutputWithPast, output_cache(out)),
        )


__all__ = [
    "MPLUGOwl2ForConditionalGeneration",
    "MPLUGOwl2Model",
    "MPLUGOwl2PreTrainedModel",
    "MultiwayNetwork",
    "output_cache",
]
