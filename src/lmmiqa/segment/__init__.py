"""Segmentation for LLM-IQA's mix-grained scoring (Dog-IQA, Liu et al. 2024).

Automatic mask generators behind the ``SEGMENTERS`` registry table (``sam2``: SAM 2 through transformers;
``felzenszwalb``: a weight-free fallback) and Algorithm 1's pure functions in :mod:`lmmiqa.segment.regions`.
Nothing heavy is imported here.
"""

from __future__ import annotations

from lmmiqa.segment.base import Segmenter, SegmenterConfig, create_segmenter
from lmmiqa.segment.regions import (
    area_weighted_mean,
    area_weights,
    crop_regions,
    mix_scores,
    select_regions,
)

__all__ = [
    "Segmenter",
    "SegmenterConfig",
    "area_weighted_mean",
    "area_weights",
    "create_segmenter",
    "crop_regions",
    "mix_scores",
    "select_regions",
]
