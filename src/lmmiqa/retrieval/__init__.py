"""Retrieval for IQARAG (METHODS §2): image encoders, the reference bank (build, save, load, search) and the
reference selection (top-K nearest, one per MOS bin).

Public names: :class:`Bank`, :func:`build_bank`, :class:`BankSource` (``lmmiqa.retrieval.bank``),
:func:`create_encoder`, :class:`EncoderSpec` (``lmmiqa.retrieval.encoders``), :func:`select_references`,
:func:`mos_bins`, :func:`normalize_mos` (``lmmiqa.retrieval.select``) and :class:`ImageLRU`
(``lmmiqa.retrieval.cache``). Importing this package loads neither faiss nor torch.
"""

from __future__ import annotations

from lmmiqa.retrieval.bank import Bank, BankItem, BankSource, build_bank
from lmmiqa.retrieval.cache import ImageLRU
from lmmiqa.retrieval.encoders import Encoder, EncoderSpec, create_encoder
from lmmiqa.retrieval.select import DEFAULT_TOP_K, mos_bins, normalize_mos, select_references

__all__ = [
    "DEFAULT_TOP_K",
    "Bank",
    "BankItem",
    "BankSource",
    "Encoder",
    "EncoderSpec",
    "ImageLRU",
    "build_bank",
    "create_encoder",
    "mos_bins",
    "normalize_mos",
    "select_references",
]
