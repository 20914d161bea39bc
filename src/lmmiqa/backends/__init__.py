"""Backends: where the model runs (in-process transformers, or an OpenAI-compatible server)."""

from __future__ import annotations

from lmmiqa.backends.base import Backend, create_backend

__all__ = ["Backend", "create_backend"]
