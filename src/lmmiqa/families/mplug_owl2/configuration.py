"""mPLUG-Owl2's configuration, read from the published ``config.json`` as it is.

The published checkpoints (``q-future/one-align``, ``MAGAer13/mplug-owl2-llama2-7b``, Q-Scorer's release) store a
flat LLaMA-2 configuration (``hidden_size``, ``num_hidden_layers``, ``rope_theta`` ...) plus ``visual_config``:
``{"visual_model": {...}, "visual_abstractor": {...}}``, either complete or partial (missing keys take the defaults
below, which are the full-size model's: a ViT-L/14 at 448² and a 6-layer visual abstractor with 64 queries).
Unknown keys (``auto_map``, training flags such as ``weight_desp``, Q-Scorer's ``score_token_id``) are kept.

Reference: Ye et al., "mPLUG-Owl2: Revolutionizing Multi-modal Large Language Model with Modality Collaboration",
2023 (X-PLUG/mPLUG-Owl); Q-Align (Wu et al., 2023) ships it as one-align.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PretrainedConfig

#: the image placeholder of the published code (``IMAGE_TOKEN_INDEX``): input ids hold it where image features go
IMAGE_TOKEN_INDEX = -200

#: the full-size vision encoder (ViT-L/14 at 448²) — the published code's defaults
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 448,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}
#: the full-size visual abstractor — the published code's defaults
ABSTRACTOR_DEFAULTS: dict[str, Any] = {
    "num_learnable_queries": 64,
    "hidden_size": 1024,
    "num_hidden_layers": 6,
    "num_attention_heads": 16,
    "intermediate_size": 2816,
    "attention_probs_dropout_prob": 0.0,
    "layer_norm_eps": 1e-6,
    "encoder_hidden_size": 1024,
    "grid_size": 32,
}


class SubConfig:
    """Attribute access to one part of ``visual_config`` with the defaults filled in (not a PretrainedConfig: the
    published files store these parts as plain dicts inside ``config.json``)."""

    def __init__(self, values: dict[str, Any], defaults: dict[str, Any]) -> None:
        merged = dict(defaults)
        merged.update({k: v for k, v in (values or {}).items() if k in defaults and v is not None})
        if merged.get("grid_size") in (None, 0):
            merged["grid_size"] = defaults.get("grid_size")
        self.__dict__.update(merged)
        self._keys = tuple(defaults)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._keys}

    def __repr__(self) -> str:
        return f"SubConfig({self.to_dict()})"


class MPLUGOwl2Config(PretrainedConfig):
    """mPLUG-Owl2 (LLaMA-2 decoder with modality-adaptive modules + ViT-L/14 + visual abstractor).

    The LLaMA fields mean what they mean in LLaMA-2; ``visual_config`` holds the vision encoder
    (``visual_model``) and abstractor (``visual_abstractor``) settings as plain dicts (see :attr:`vision` and
    :attr:`abstractor` for them with defaults). ``image_token_index`` is the placeholder id of image positions in
    ``input_ids`` (the published code's ``IMAGE_TOKEN_INDEX``, -200).
    """

    model_type = "mplug_owl2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        visual_config: dict[str, Any] | None = None,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        pretraining_tp: int = 1,
        tie_word_embeddings: bool = False,
        rope_theta: float = 10000.0,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        image_token_index: int = IMAGE_TOKEN_INDEX,
        **kwargs: Any,
    ) -> None:
        visual = copy.deepcopy(visual_config) if visual_config else {}
        self.visual_config = {
            "visual_model": SubConfig(visual.get("visual_model") or {}, VISION_DEFAULTS).to_dict(),
            "visual_abstractor": SubConfig(visual.get("visual_abstractor") or {}, ABSTRACTOR_DEFAULTS).to_dict(),
        }
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.pretraining_tp = pretraining_tp
        self.rope_theta = float(rope_theta)
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.mlp_bias = False
        # not ``image_token_id``: transformers checks that one against the vocabulary, and -200 is outside it
        self.image_token_index = int(kwargs.pop("image_token_id", image_token_index))
        # the published files say rope_scaling: null; a rope_parameters dict (written by newer transformers) is
        # read as well (see rope_settings)
        rope_scaling = kwargs.pop("rope_scaling", None)
        if rope_scaling is not None:
            self.rope_scaling = rope_scaling
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def vision(self) -> SubConfig:
        """The vision encoder settings (``visual_config["visual_model"]`` with defaults)."""
        return SubConfig(self.visual_config.get("visual_model") or {}, VISION_DEFAULTS)

    @property
    def abstractor(self) -> SubConfig:
        """The visual abstractor settings (``visual_config["visual_abstractor"]`` with defaults)."""
        return SubConfig(self.visual_config.get("visual_abstractor") or {}, ABSTRACTOR_DEFAULTS)

    @property
    def num_image_tokens(self) -> int:
        """Positions one image takes in the language model: the abstractor's queries plus its end-of-image
        embedding (``vit_eos``): 65 for the published checkpoints."""
        return int(self.abstractor.num_learnable_queries) + 1

    def rope_settings(self) -> tuple[float, str, float]:
        """``(theta, type, factor)`` of the rotary embedding: ``default`` (the published checkpoints) or
        ``linear`` position interpolation."""
        theta = float(self.rope_theta)
        scaling = getattr(self, "rope_scaling", None)
        params = getattr(self, "rope_parameters", None)
        if isinstance(params, dict):
            theta = float(params.get("rope_theta", theta))
            if params.get("rope_type", "default") != "default" and scaling is None:
                scaling = {"type": params.get("rope_type"), "factor": params.get("factor")}
        if not scaling:
            return theta, "default", 1.0
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind == "linear":
            return theta, "linear", float(scaling.get("factor", 1.0))
        from lmmiqa.errors import ConfigError

        raise ConfigError(f"mPLUG-Owl2: rope scaling {kind!r} is not supported (supported: none, 'linear')")


__all__ = ["ABSTRACTOR_DEFAULTS", "IMAGE_TOKEN_INDEX", "VISION_DEFAULTS", "MPLUGOwl2Config", "SubConfig"]
