"""A tiny random-weight SAM 2 for offline tests (no download), public so plugin authors can use it too.

The weights are random, so the masks are arbitrary; what it exercises is the loading path
(``save_pretrained`` → ``from_pretrained(local folder)``) and the mechanics of the automatic mask generator
(SAM 2, Ravi et al. 2024) in :mod:`lmmiqa.segment.sam2`.
"""

from __future__ import annotations

import os
from typing import Any

from lmmiqa.errors import ConfigError, require


def tiny_sam2_config(image_size: int = 64) -> Any:
    """A transformers ``Sam2Config`` with a 4-stage, 5-block Hiera backbone of width 16 (~0.33 M parameters).

    ``image_size`` must be a multiple of 32 (the backbone downsamples by 4, then 2, 2, 2; the prompt encoder's
    patch size is 16).
    """
    transformers = require("transformers", "hf", "a tiny SAM 2")
    s = int(image_size)
    if s < 32 or s % 32:
        raise ConfigError(f"image_size must be a multiple of 32 (>= 32), got {image_size!r}")
    return transformers.Sam2Config(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 16,
                "num_attention_heads": 1,
                "image_size": [s, s],
                "blocks_per_stage": [1, 1, 2, 1],
                "embed_dim_per_stage": [16, 32, 64, 128],
                "num_attention_heads_per_stage": [1, 1, 1, 1],
                "window_size_per_stage": [4, 4, 4, 2],
                # a global-attention block must not be the first (query-pooling) block of a stage
                "global_attention_blocks": [3],
                "window_positional_embedding_background_size": [2, 2],
            },
            "backbone_channel_list": [128, 64, 32, 16],
            "backbone_feature_sizes": [[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
            "fpn_hidden_size": 32,
        },
        prompt_encoder_config={
            "hidden_size": 32,
            "image_size": s,
            "patch_size": 16,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )


def make_tiny_sam2(path: str | os.PathLike[str], image_size: int = 64, seed: int = 0) -> str:
    """Build a random-weight tiny SAM 2 and ``save_pretrained`` it to ``path``; returns the folder as a str."""
    torch = require("torch", "hf", "a tiny SAM 2")
    transformers = require("transformers", "hf", "a tiny SAM 2")
    torch.manual_seed(seed)
    model = transformers.Sam2Model(tiny_sam2_config(image_size))
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    return os.fspath(path)
