"""mPLUG-Owl3 (Ye et al. 2024, "mPLUG-Owl3: Towards Long Image-Sequence Understanding in Multi-Modal Large Language
Models", arXiv:2408.04840) as lmmiqa runs it: lmmiqa's own implementation for current transformers, written from the
published checkpoint's architecture (mPLUG/mPLUG-Owl3-7B-240728), no hub code.

Architecture (the published names in brackets, which this module uses, so the published weight files load as they
are and a saved model keeps them):

* **Vision** [``vision_model.*``]: SigLIP-so400m (27 layers, hidden 1152, 384² input, patch 14 → 27×27 = 729
  patches per view). The features are the hidden state *before the last layer* (the encoder's second-to-last
  hidden state; ``post_layernorm`` and the pooling head are not used), projected to the decoder's width by
  [``vision2text_model``] (a linear layer). Each image view gives 729 feature vectors; they do **not** enter the
  token sequence.
* **Decoder** [``language_model.model.*``, ``language_model.lm_head``]: Qwen2 (RMSNorm, rotary positions, grouped-query
  attention with q/k/v biases, SwiGLU MLP). In the **hyper layers** (``config.hyper_layers``, 1-based) the attention
  block also cross-attends from the text queries to the image features ("hyper attention"):

  1. the image features go through the layer's own ``input_layernorm`` and [``self_attn.v_kv_proj``] to one key and
     one value per KV head;
  2. the keys of image ``k`` get the rotary embedding of the position right after the first token of its
     ``<|image|>`` placeholder (MI-RoPE), so text queries (rotated with their own positions) see images at their
     place in the text;
  3. a text token sees the images whose placeholder *starts before it* (``media_offset``): tokens before the first
     image are left unchanged; during generation new tokens see every image of their prompt;
  4. the cross-attention output ``v`` and the self-attention output ``c`` (per head, before ``o_proj``) are mixed
     by a gate ``g = sigmoid(Linear(c))`` [``self_attn.gate_proj.0``]: ``c·(1 − g) + v·g``.

``media_offset`` (the processor's output, the published format): ``[B, L, 2]``; for token ``t`` of prompt ``b``,
``[b, t, 0]`` is the number of images of the prompts before ``b`` in the batch and ``[b, t, 1]`` that plus the
number of images of prompt ``b`` whose placeholder starts before ``t``; a prompt without images has ``-1000000``
in the second column. Left padding is supported (positions and MI-RoPE positions are counted from the first real
token, so a padded prompt scores as it does alone); the published code itself takes one prompt at a time.

Attention implementations: ``sdpa`` (default) and ``eager``; the hyper attention always uses
``torch.nn.functional.scaled_dot_product_attention``. The vision tower follows transformers' SigLIP layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import ModelOutput
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

from lmmiqa.families.mplug_owl3.configuration import MplugOwl3Config
from lmmiqa.families.mplug_owl3.processing import NO_MEDIA


# ---------------------------------------------------------------------------------------------- building blocks
class Owl3RMSNorm(nn.Module):
    """Qwen2's RMS normalisation (computed in float32)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class Owl3MLP(nn.Module):
    """Qwen2's SwiGLU MLP."""

    def __init__(self, config: MplugOwl3Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotary embedding at integer ``positions`` (any shape) -> ``[..., head_dim]`` in ``dtype``
    (frequencies and angles in float32, as Qwen2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, Hkv, L, D]`` -> ``[B, Hkv·n_rep, L, D]`` (each KV head serves ``n_rep`` query heads)."""
    if n_rep == 1:
        return x
    b, h, length, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, length, d).reshape(b, h * n_rep, length, d)


@dataclass
class MediaLayout:
    """Where each prompt's images are, computed once per forward from ``media_offset`` (see the module docstring).

    Attributes:
        ranges: per prompt, ``(first, end)`` indices into the batch's image features (``end == first``: none).
        rope_positions: per prompt, the MI-RoPE position of each of its images (its placeholder's first token's
            position + 1, counted from the prompt's first real token).
        visible: ``[B, L_media]`` long: how many of the prompt's images each token of the prompt sees.
    """

    ranges: list[tuple[int, int]]
    rope_positions: list[torch.Tensor]
    visible: torch.Tensor

    @classmethod
    def from_media_offset(cls, media_offset: torch.Tensor, attention_mask: torch.Tensor | None) -> MediaLayout:
        mo = media_offset.long()
        if mo.dim() != 3 or mo.shape[-1] != 2:
            raise ValueError(f"media_offset must be [batch, length, 2], got {tuple(mo.shape)}")
        batch, length = mo.shape[:2]
        first = mo[:, -1, 0]
        last = mo[:, -1, 1]
        has = last >= 0
        counts = torch.where(has, last - first, torch.zeros_like(last))
        visible = torch.where(has[:, None], mo[:, :, 1] - first[:, None], torch.zeros_like(mo[:, :, 1])).clamp(min=0)
        if attention_mask is not None:
            real = attention_mask[:, :length].long()
            pos = real.cumsum(-1) - 1
        else:
            pos = torch.arange(length, device=mo.device).expand(batch, length)
        ranges: list[tuple[int, int]] = []
        rope: list[torch.Tensor] = []
        for b in range(batch):
            n = int(counts[b])
            ranges.append((int(first[b]), int(first[b]) + n))
            if n == 0:
                rope.append(pos.new_zeros(0))
                continue
            # image k's placeholder starts at the token t where the number of started images steps up after t
            steps = (visible[b, 1:] - visible[b, :-1]).nonzero().squeeze(1)
            if steps.numel() != n:
                raise ValueError(
                    f"media_offset of prompt {b} announces {n} images but its placeholders start {steps.numel()} times"
                )
            rope.append(pos[b, steps] + 1)
        return cls(ranges, rope, visible)

    def visible_for(self, b: int, absolute: torch.Tensor) -> torch.Tensor:
        """Images of prompt ``b`` seen by the tokens at ``absolute`` indices (tokens past the prompt — generated
        ones — see all of them)."""
        n = self.ranges[b][1] - self.ranges[b][0]
        length = self.visible.shape[1]
        inside = absolute < length
        idx = absolute.clamp(max=length - 1)
        return torch.where(inside, self.visible[b, idx], torch.full_like(idx, n))


# ---------------------------------------------------------------------------------------------- vision
class Owl3VisionEmbeddings(nn.Module):
    """SigLIP patch + position embeddings (names as transformers' ``SiglipVisionEmbeddings``)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size, padding="valid"
        )
        self.num_positions = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        if x.shape[1] != self.num_positions:
            raise ValueError(f"the vision tower takes {self.num_positions} patches per view, got {x.shape[1]}")
        return x + self.position_embedding.weight[None]


class Owl3VisionEncoder(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList([SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers)])


class Owl3VisionModel(nn.Module):
    """SigLIP vision transformer returning the second-to-last hidden state (the features mPLUG-Owl3 uses)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Owl3VisionEmbeddings(config)
        self.encoder = Owl3VisionEncoder(config)
        # stored in the checkpoint, unused by mPLUG-Owl3 (its features come from before the last layer)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(pixel_values)
        for layer in self.encoder.layers[:-1]:
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


# ---------------------------------------------------------------------------------------------- decoder
class Owl3Attention(nn.Module):
    """Qwen2 self-attention; in hyper layers also the gated hyper (cross-)attention to the image features."""

    def __init__(self, config: MplugOwl3Config, layer_idx: int, hyper: bool) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hyper = hyper
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.groups = self.num_heads // self.num_kv_heads
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        if hyper:
            self.v_kv_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim * 2, bias=True)
            self.gate_proj = nn.Sequential(nn.Linear(self.head_dim, self.head_dim), nn.Sigmoid())

    def _self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        k = repeat_kv(k, self.groups)
        v = repeat_kv(v, self.groups)
        if self.config._attn_implementation == "eager":
            scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5
            if mask is None:
                lq, lk = q.shape[-2], k.shape[-2]
                mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)[None, None]
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            return torch.matmul(probs, v)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[-2] > 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _image_kv(self, image_states: torch.Tensor, lo: int, hi: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (MI-RoPE rotated) and values of images ``lo:hi`` -> ``[1, H, n·Lv, D]`` each."""
        kv = self.v_kv_proj(image_states[lo:hi])  # [n, Lv, Hkv·2·D], laid out (head, key/value, dim)
        n, lv = kv.shape[:2]
        kv = kv.view(n, lv, self.num_kv_heads, 2, self.head_dim)
        keys, values = kv[..., 0, :], kv[..., 1, :]  # [n, Lv, Hkv, D]
        cos, sin = rope_cos_sin(positions, self.head_dim, self.config.rope_theta, torch.float32)  # [n, D]
        k32 = keys.float()
        keys = (k32 * cos[:, None, None] + rotate_half(k32) * sin[:, None, None]).to(values.dtype)
        keys = keys.permute(2, 0, 1, 3).reshape(1, self.num_kv_heads, n * lv, self.head_dim)
        values = values.permute(2, 0, 1, 3).reshape(1, self.num_kv_heads, n * lv, self.head_dim)
        return repeat_kv(keys, self.groups), repeat_kv(values, self.groups)

    def _hyper(
        self, q: torch.Tensor, context: torch.Tensor, image_states: torch.Tensor, layout: MediaLayout, absolute: torch.Tensor
    ) -> torch.Tensor:
        """Mix the gated image cross-attention into the self-attention output ``context`` ``[B, L, H·D]``."""
        out = context.clone()
        batch, length = context.shape[:2]
        for b in range(batch):
            lo, hi = layout.ranges[b]
            if hi <= lo:
                continue
            seen = layout.visible_for(b, absolute[b])  # [L]
            rows = (seen > 0).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            start = int(rows[0])  # visibility never decreases along a prompt: rows are start..L-1
            seen = seen[start:]
            keys, values = self._image_kv(image_states, lo, hi, layout.rope_positions[b])
            n, lv = hi - lo, keys.shape[2] // (hi - lo)
            if bool((seen >= n).all()):
                mask = None
            else:
                image_of_key = torch.arange(n, device=q.device).repeat_interleave(lv)
                mask = (image_of_key[None, :] < seen[:, None])[None, None]
            attended = F.scaled_dot_product_attention(q[b : b + 1, :, start:], keys, values, attn_mask=mask)
            attended = attended[0].transpose(0, 1).reshape(length - start, -1)
            ctx = context[b, start:]
            gate = self.gate_proj(ctx.view(length - start, self.num_heads, self.head_dim)).reshape(length - start, -1)
            out[b, start:] = ctx * (1 - gate) + attended * gate
        return out

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: Cache | None,
        image_states: torch.Tensor | None,
        layout: MediaLayout | None,
        absolute: torch.Tensor,
    ) -> torch.Tensor:
        batch, length = hidden_states.shape[:2]
        q = self.q_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        cos, sin = cos_sin
        cos, sin = cos[:, None], sin[:, None]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        context = self._self_attention(q, k, v, mask).transpose(1, 2).reshape(batch, length, -1)
        if self.hyper and image_states is not None and layout is not None:
            context = self._hyper(q, context, image_states, layout, absolute)
        return self.o_proj(context)


class Owl3DecoderLayer(nn.Module):
    def __init__(self, config: MplugOwl3Config, layer_idx: int) -> None:
        super().__init__()
        self.is_hyper = (layer_idx + 1) in config.hyper_layers
        self.self_attn = Owl3Attention(config, layer_idx, self.is_hyper)
        self.mlp = Owl3MLP(config)
        self.input_layernorm = Owl3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Owl3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: Cache | None,
        image_embeds: torch.Tensor | None,
        layout: MediaLayout | None,
        absolute: torch.Tensor,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        # the image features share this layer's input norm (hyper layers only)
        image_states = self.input_layernorm(image_embeds) if (self.is_hyper and image_embeds is not None) else None
        hidden_states = residual + self.self_attn(hidden_states, cos_sin, mask, cache, image_states, layout, absolute)
        residual = hidden_states
        return residual + self.mlp(self.post_attention_layernorm(hidden_states))


class Owl3TextModel(nn.Module):
    """The decoder stack [``language_model.model``]."""

    def __init__(self, config: MplugOwl3Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Owl3DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = Owl3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class Owl3LanguageModel(nn.Module):
    """[``language_model``]: the decoder and its LM head."""

    def __init__(self, config: MplugOwl3Config) -> None:
        super().__init__()
        self.model = Owl3TextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)


# ---------------------------------------------------------------------------------------------- the model
@dataclass
class MplugOwl3Output(ModelOutput):
    """Outputs of :class:`MplugOwl3ForConditionalGeneration` (the cache under both names transformers versions use)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    cache: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    image_embeds: torch.Tensor | None = None


def _mask(attention_mask: torch.Tensor | None, batch: int, q_len: int, past: int, device: torch.device) -> torch.Tensor | None:
    """Boolean ``[B, 1, q, past + q]`` mask (True: attend): causal and not padding; None when plain causal suffices.

    A padding query row, which would see no key, is given its causal row so that no NaN appears (its output is
    never read by a real token)."""
    k_len = past + q_len
    causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(past)
    if attention_mask is None or bool(attention_mask[:, -k_len:].all()):
        if past == 0 or q_len == 1:
            return None  # SDPA's own causal mask (prefill) or no mask at all (one new token)
        return causal[None, None].expand(batch, 1, q_len, k_len)
    keys = attention_mask[:, -k_len:].bool()
    mask = causal[None] & keys[:, None, :]
    empty = ~mask.any(-1, keepdim=True)
    mask = torch.where(empty, causal[None].expand_as(mask), mask)
    return mask[:, None]


class MplugOwl3PreTrainedModel(PreTrainedModel):
    config_class = MplugOwl3Config
    config: MplugOwl3Config
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Owl3DecoderLayer", "SiglipEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    # the pooling head of SigLIP may or may not be stored in a checkpoint; mPLUG-Owl3 never uses it
    _keys_to_ignore_on_load_unexpected = [r"^vision_model\.head\."]


class MplugOwl3ForConditionalGeneration(MplugOwl3PreTrainedModel, GenerationMixin):
    """mPLUG-Owl3 (see the module docstring). ``forward`` takes the processor's outputs (``input_ids``,
    ``attention_mask``, ``pixel_values``, ``media_offset``) and returns next-token logits."""

    def __init__(self, config: MplugOwl3Config) -> None:
        super().__init__(config)
        self.language_model = Owl3LanguageModel(config)
        self.vision_model = Owl3VisionModel(config.vision_config)
        self.vision2text_model = nn.Linear(config.vision_config.hidden_size, config.hidden_size)
        #: views per vision-tower forward (bounds memory; results do not depend on it)
        self.vision_batch_size = 16
        self.post_init()

    # -- transformers plumbing ------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.lm_head = value

    # -- features -------------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image views ``[N, 3, 384, 384]`` -> projected features ``[N, 729, hidden]`` (what the hyper layers read)."""
        dtype = self.language_model.model.embed_tokens.weight.dtype
        vision_config = self.config.vision_config
        if getattr(vision_config, "_attn_implementation", None) is None:
            # transformers resolves the default implementation for the top config only
            vision_config._attn_implementation = self.config._attn_implementation
        chunks = []
        step = max(1, int(self.vision_batch_size))
        for i in range(0, pixel_values.shape[0], step):
            feats = self.vision_model(pixel_values[i : i + step].to(dtype))
            chunks.append(self.vision2text_model(feats))
        return torch.cat(chunks, dim=0)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        media_offset: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MplugOwl3Output:
        """Next-token logits.

        Args:
            input_ids: ``[B, L]`` token ids (left-padded in a batch).
            attention_mask: ``[B, L]`` (or ``[B, past + L]`` with a cache); 0 marks padding.
            pixel_values: ``[N, 3, 384, 384]`` every image view of the batch in prompt order (the processor's).
            media_offset: ``[B, L, 2]`` where each prompt's images are (module docstring); required with images.
            image_embeds: projected image features (instead of ``pixel_values``; kept by ``generate``).
            past_key_values / cache: a transformers ``Cache`` (generation).
            use_cache: return the cache (default: ``config.use_cache``).
            output_hidden_states: also return every layer's input and the final normed state.
            logits_to_keep: compute logits for the last N positions only (0: all).
        """
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        text = self.language_model.model
        hidden = text.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = hidden.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0

        if image_embeds is None and pixel_values is not None and pixel_values.numel():
            image_embeds = self.encode_images(pixel_values)
        layout = None
        if image_embeds is not None:
            if media_offset is None:
                raise ValueError("media_offset is required with images: pass every output of the mPLUG-Owl3 processor")
            layout = MediaLayout.from_media_offset(media_offset.to(hidden.device), attention_mask)
            needed = max((hi for _, hi in layout.ranges), default=0)
            if needed > image_embeds.shape[0]:
                raise ValueError(f"media_offset refers to {needed} image views but {image_embeds.shape[0]} were given")

        if position_ids is None:
            if attention_mask is not None:
                full = attention_mask.long()
                position_ids = (full.cumsum(-1) - 1).clamp(min=0)[:, -length:]
            else:
                position_ids = torch.arange(past, past + length, device=hidden.device)[None].expand(batch, length)
        absolute = torch.arange(past, past + length, device=hidden.device)[None].expand(batch, length)
        cos_sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, hidden.dtype)
        mask = _mask(attention_mask, batch, length, past, hidden.device)

        states: list[torch.Tensor] = []
        for layer in text.layers:
            if output_hidden_states:
                states.append(hidden)
            hidden = layer(hidden, cos_sin, mask, cache, image_embeds, layout, absolute)
        hidden = text.norm(hidden)
        if output_hidden_states:
            states.append(hidden)

        keep = hidden[:, -logits_to_keep:] if isinstance(logits_to_keep, int) and logits_to_keep > 0 else hidden
        if isinstance(logits_to_keep, torch.Tensor):
            keep = hidden[:, logits_to_keep]
        if keep.data_ptr() != hidden.data_ptr() or keep.shape != hidden.shape:
            # a slice keeps the strides of the whole sequence; CPU bf16 matmuls take a path ~400x slower on such an
            # input (measured: 0.4 s vs 170 s for the 7B LM head), so hand the head a freshly laid-out copy
            keep = keep.clone(memory_format=torch.contiguous_format)
        logits = self.language_model.lm_head(keep).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        return MplugOwl3Output(
            loss=loss,
            logits=logits,
            past_key_values=cache if use_cache else None,
            cache=cache if use_cache else None,
            hidden_states=tuple(states) if output_hidden_states else None,
            image_embeds=image_embeds,
        )

    # -- generation -----------------------------------------------------------------------------------------
    def _update_model_kwargs_for_generation(self, outputs: Any, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Keep the image features of the first step for the next ones (the hyper layers read them at every step)."""
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if getattr(outputs, "image_embeds", None) is not None:
            model_kwargs["image_embeds"] = outputs.image_embeds
            model_kwargs.pop("pixel_values", None)
        return model_kwargs


__all__ = ["NO_MEDIA", "MediaLayout", "MplugOwl3ForConditionalGeneration", "MplugOwl3Output", "MplugOwl3PreTrainedModel"]
