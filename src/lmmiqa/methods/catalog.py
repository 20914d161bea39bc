"""What ``lmmiqa methods`` shows: each method with its summary, aliases and presets, every preset value beside
lmmiqa's default with its source (:mod:`lmmiqa.presets`), including the presets of the commands that make a
method's artifact (LEAF's ``distill`` steps).

A method without a ``paper`` preset says so (``has_paper_preset`` false), so that a reader knows lmmiqa's defaults
are all it offers for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from lmmiqa import registry


def _config_class(spec: str | None) -> type | None:
    if not spec:
        return None
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def method_entry(name: str) -> dict[str, Any]:
    """One method's catalog entry (JSON-safe): ``{"name", "summary", "aliases", "presets", "stage_presets",
    "has_paper_preset"}``; each preset as :meth:`Preset.to_dict` with ``values`` from
    :meth:`Preset.beside_defaults`. ``name`` is a registered name, an alias, or ``package.module:Class``."""
    canonical = registry.canonical("method", name) if ":" not in name else name
    cls = registry.resolve_method(canonical)
    summary = getattr(cls, "summary", "") or (cls.__doc__ or "").strip().splitlines()[0]

    def view(preset: Any, config_cls: type | None) -> dict[str, Any]:
        d = preset.to_dict()
        d["values"] = preset.beside_defaults(config_cls)
        return d

    presets = {n: view(p, cls.config_cls) for n, p in getattr(cls, "presets", {}).items()}
    stages = {
        step: {n: view(p, _config_class(p.config)) for n, p in table.items()}
        for step, table in getattr(cls, "stage_presets", {}).items()
    }
    return {
        "name": canonical,
        "summary": summary,
        "aliases": registry.aliases("method", canonical) if ":" not in canonical else [],
        "presets": presets,
        "stage_presets": stages,
        "has_paper_preset": "paper" in presets,
    }


def catalog(names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`method_entry` of each of ``names`` (default: every registered method), by canonical name."""
    out: dict[str, dict[str, Any]] = {}
    for name in names or registry.names("method"):
        entry = method_entry(name)
        out[entry["name"]] = entry
    return out


__all__ = ["catalog", "method_entry"]
