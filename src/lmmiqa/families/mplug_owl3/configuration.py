"""mPLUG-Owl3's configuration (``model_type: "mplugowl3"``), read from the published ``config.json``.

The published file (mPLUG/mPLUG-Owl3-7B-240728) is flat: the Qwen2 decoder's fields (hidden size 3584, 28 layers,
28 heads, 4 KV heads, vocabulary 151851, rope theta 1e6) at the top level, plus ``hyper_layers`` (1-based: decoder
layer ``i`` (0-based) is a hyper-attention layer when ``i + 1`` is listed; ``[1, 9, 17, 25]``) and a SigLIP
``vision_config`` (so400m: hidden 1152, 27 layers, 384² input, patch 14). This class reads those names, so the
published file loads unchanged and a saved config stays loadable by the official code.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, SiglipVisionConfig

MODEL_TYPE = "mplugowl3"

#: The published checkpoint's vision tower (SigLIP-so400m, 384² input, patch 14), used when a config has none.
DEFAULT_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 1152,
    "image_size": 384,
    "intermediate_size": 4304,
    "model_type": "siglip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 27,
    "patch_size": 14,
}


class MplugOwl3Config(PretrainedConfig):
    """mPLUG-Owl3: a Qwen2 decoder with hyper-attention layers over SigLIP image features.

    Args:
        vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
        hidden_act, max_position_embeddings, initializer_range, rms_norm_eps, rope_theta, attention_dropout,
        use_sliding_window, sliding_window, max_window_layers, tie_word_embeddings, use_cache: the Qwen2 decoder's
            settings (names and defaults of the published ``config.json`` and its code).
        hyper_layers: 1-based numbers of the hyper-attention layers (layer ``i`` is one when ``i + 1`` is listed).
        vision_config: the SigLIP vision tower (a dict or ``SiglipVisionConfig``).
    """

    model_type = MODEL_TYPE
    sub_configs = {"vision_config": SiglipVisionConfig}
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 151851,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: int | None = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        rope_theta: float = 1000000.0,
        use_sliding_window: bool = False,
        sliding_window: int | None = 131072,
        max_window_layers: int = 28,
        attention_dropout: float = 0.0,
        hyper_layers: list[int] | tuple[int, ...] = (1, 9, 17, 25),
        vision_config: dict[str, Any] | SiglipVisionConfig | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.intermediate_size = int(intermediate_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_attention_heads = int(num_attention_heads)
        self.num_key_value_heads = int(num_key_value_heads if num_key_value_heads is not None else num_attention_heads)
        self.hidden_act = hidden_act
        self.max_position_embeddings = int(max_position_embeddings)
        self.initializer_range = float(initializer_range)
        self.rms_norm_eps = float(rms_norm_eps)
        self.use_cache = bool(use_cache)
        self.rope_theta = float(rope_theta)
        self.use_sliding_window = bool(use_sliding_window)
        # the published code implements no sliding window outside flash attention; lmmiqa implements none
        self.sliding_window = sliding_window if use_sliding_window else None
        self.max_window_layers = int(max_window_layers)
        self.attention_dropout = float(attention_dropout)
        self.hyper_layers = [int(i) for i in hyper_layers]
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads "
                f"{self.num_key_value_heads}"
            )
        if vision_config is None:
            vision_config = dict(DEFAULT_VISION_CONFIG)
        if isinstance(vision_config, dict):
            vision_config = SiglipVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})
        self.vision_config = vision_config
        # transformers' generic cache code reads the decoder's layer types
        self.layer_types = ["full_attention"] * self.num_hidden_layers
        kwargs.pop("layer_types", None)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.vision_config.patch_size)

    def hyper_layer_indices(self) -> list[int]:
        """0-based indices of the hyper-attention layers."""
        return [i for i in range(self.num_hidden_layers) if (i + 1) in self.hyper_layers]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("layer_types", None)  # derived; the published config.json has none
        return out


__all__ = ["DEFAULT_VISION_CONFIG", "MODEL_TYPE", "MplugOwl3Config"]
