"""Reproducing the papers: their published numbers (:mod:`.published`), their evaluation protocols run on the
datasets a user has (:mod:`.runner`, ``lmmiqa reproduce``) and the side-by-side report (:mod:`.report`)."""

from __future__ import annotations

from typing import Any

__all__ = ["reproduce"]


def reproduce(method: str, datasets: Any, out: Any, **kwargs: Any) -> Any:
    """Run ``method``'s paper protocol on ``datasets``; see :func:`lmmiqa.reproduce.runner.reproduce`."""
    from lmmiqa.reproduce.runner import reproduce as _reproduce

    return _reproduce(method, datasets, out, **kwargs)
