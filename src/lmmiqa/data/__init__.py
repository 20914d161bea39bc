"""Datasets: records (what is known about each dataset), the label-file loader, splits, synthetic ladders.

Public names: :class:`Dataset`, :class:`DatasetItem`, :func:`load_dataset` (``lmmiqa.data.loader``),
:class:`DatasetRecord`, :func:`get_record` (``lmmiqa.data.records``), :func:`parse_split`
(``lmmiqa.data.splits``) and :func:`make_ladder` (``lmmiqa.data.synth``, imported on first use).
"""

from __future__ import annotations

from typing import Any

from lmmiqa.data.loader import Dataset, DatasetItem, load_dataset
from lmmiqa.data.records import DatasetRecord, LabelFormat, get_record
from lmmiqa.data.splits import SplitSpec, parse_split

__all__ = [
    "Dataset",
    "DatasetItem",
    "DatasetRecord",
    "LabelFormat",
    "SplitSpec",
    "get_record",
    "load_dataset",
    "make_ladder",
    "parse_split",
]


def __getattr__(name: str) -> Any:
    if name == "make_ladder":
        from lmmiqa.data.synth import make_ladder

        return make_ladder
    raise AttributeError(f"module 'lmmiqa.data' has no attribute {name!r}")
