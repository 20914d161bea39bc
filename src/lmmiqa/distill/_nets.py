"""Torch modules of LEAF students (imported only by :mod:`lmmiqa.distill.students` when a network is built).

* :class:`SmallCNNBackbone` — a small CNN for CPUs: four conv stages (stride 1, 2, 2, 2) with batch norm; its
  features are the per-channel mean *and* standard deviation of every stage (first-stage statistics carry
  the low-level cues of noise, blur and contrast that global pooling of deep features washes out).
* :class:`HFBackbone` — any transformers image model with a ``pooler_output`` (ConvNeXt, ResNet, …).
* :class:`StudentNetwork` — backbone + a shared hidden layer + a score head (1 output) and, when the teacher
  has level distributions, a K-way level head (logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def local_contrast_normalize(gray: torch.Tensor, size: int = 7, c: float = 1e-2) -> torch.Tensor:
    """Local contrast normalization ``(I − μ)/(σ + c)`` with a ``size``×``size`` box window (Kang et al., CVPR 2014
    normalize patches this way before their NR-IQA CNN; the MSCN coefficients of BRISQUE/NIQE are the Gaussian
    version). Input and output [B, 1, H, W]."""
    pad = size // 2
    padded = nn.functional.pad(gray, (pad, pad, pad, pad), mode="reflect")
    mu = nn.functional.avg_pool2d(padded, size, stride=1)
    var = nn.functional.avg_pool2d(padded * padded, size, stride=1) - mu * mu
    return (gray - mu) / (torch.sqrt(torch.clamp(var, min=0.0)) + c)


class SmallCNNBackbone(nn.Module):
    """Four 3×3 conv stages; output = concatenated per-channel mean and std of every stage."""

    def __init__(self, channels: Sequence[int] = (8, 16, 32, 64), norm: str = "batch", lcn: bool = False) -> None:
        super().__init__()
        layers = []
        self.lcn = bool(lcn)
        c_in = 4 if self.lcn else 3
        for i, c in enumerate(channels):
            mods: list[nn.Module] = []
            for j in range(2):
                mods.append(nn.Conv2d(c_in if j == 0 else c, c, 3, stride=2 if (i > 0 and j == 0) else 1, padding=1,
                                      bias=norm == "none"))
                if norm == "batch":
                    mods.append(nn.BatchNorm2d(c))
                mods.append(nn.ReLU(inplace=True))
            layers.append(nn.Sequential(*mods))
            c_in = c
        self.stages = nn.ModuleList(layers)
        self.feature_dim = 2 * int(sum(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lcn:
            x = torch.cat([x, local_contrast_normalize(x.mean(dim=1, keepdim=True))], dim=1)
        feats = []
        for stage in self.stages:
            x = stage(x)
            flat = x.flatten(2)
            feats.append(flat.mean(dim=2))
            feats.append(flat.std(dim=2, unbiased=False))
        return torch.cat(feats, dim=1)


class HFBackbone(nn.Module):
    """A transformers image model used as a feature extractor (its pooled output, flattened)."""

    def __init__(self, model: Any, feature_dim: int) -> None:
        super().__init__()
        self.model = model
        self.feature_dim = int(feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        return out.pooler_output.flatten(1)


class StudentNetwork(nn.Module):
    """Backbone → Linear + GELU (shared) → score head (1) and optional level head (K logits)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, k_levels: int | None = None, hidden: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        h = min(int(hidden), int(feature_dim))
        self.neck = nn.Sequential(nn.Linear(feature_dim, h), nn.GELU())
        self.score_head = nn.Linear(h, 1)
        self.level_head = nn.Linear(h, int(k_levels)) if k_levels else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.neck(self.backbone(x))
        score = self.score_head(z).squeeze(1)
        logits = self.level_head(z) if self.level_head is not None else None
        return score, logits
