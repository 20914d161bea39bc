"""Presets: named sets of option values, each value with its source.

A method's ``paper`` preset fixes the model and every option its paper fixes, so that "the paper's method" is one
word (``--preset paper``; Python ``create_scorer(method, preset="paper")``). Where a paper is silent, the value is
lmmiqa's decision and its source says so. Explicit options always override a preset's values. The preset in use is
recorded in every result (``details.preset``), in ``describe()`` (run configs, eval reports) and listed by
``lmmiqa methods``.

Presets are data: a method class lists its own in ``Scorer.presets`` (name -> :class:`Preset`); a training recipe
(e.g. ``lmmiqa train q-scorer --preset paper``) uses the same type for its config fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmmiqa.errors import ConfigError, UnknownNameError

#: the source text of a value that is lmmiqa's own choice where the paper is silent starts with this
DECISION = "lmmiqa decision"


@dataclass(frozen=True)
class PresetValue:
    """One option value of a preset and where it comes from.

    Attributes:
        value: the option value (JSON-safe).
        source: where it is fixed, e.g. ``"Q-Align official scorer.py"``, ``"paper §3.2"``, or
            ``"lmmiqa decision: <why>"`` (:data:`DECISION`) where the paper is silent.
    """

    value: Any
    source: str

    def __post_init__(self) -> None:
        if not self.source or not self.source.strip():
            raise ConfigError("every preset value needs a source (a paper section, official code, or 'lmmiqa decision: ...')")

    @property
    def is_decision(self) -> bool:
        """Whether the value is lmmiqa's own choice (the paper does not fix it)."""
        return self.source.lower().startswith(DECISION)


@dataclass(frozen=True)
class Preset:
    """A named set of option values for one method (or one training recipe).

    Attributes:
        name: preset name (``"paper"``).
        target: the method or recipe it configures (``"q-align"``, ``"train q-scorer"``).
        summary: one line: what it reproduces.
        reference: the paper (and checkpoint) it follows.
        values: option name -> :class:`PresetValue`.
        notes: what the preset cannot reproduce, and why (e.g. a model that is not public).
        config: the config dataclass whose fields the values set, as ``"module:Class"`` (a training step's
            config), so that ``lmmiqa methods --presets`` can show lmmiqa's defaults beside the values; None for a
            method's presets (the method's own ``config_cls``).
    """

    name: str
    target: str
    summary: str
    reference: str
    values: Mapping[str, PresetValue] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    config: str | None = None

    def options(self) -> dict[str, Any]:
        """The option values alone (name -> value)."""
        return {k: v.value for k, v in self.values.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description: values with their sources, notes."""
        from lmmiqa.types import json_safe

        return {
            "name": self.name,
            "target": self.target,
            "summary": self.summary,
            "reference": self.reference,
            "values": {k: {"value": json_safe(v.value), "source": v.source} for k, v in self.values.items()},
            "notes": list(self.notes),
        }

    def beside_defaults(self, config_cls: type | None) -> dict[str, dict[str, Any]]:
        """Each value beside lmmiqa's default for the same option (the field default of ``config_cls``):
        ``{option: {"value", "default", "has_default", "differs", "source", "decision"}}`` (JSON-safe).
        ``has_default`` is false for an option that is not a field of ``config_cls`` (e.g. a teacher's model)."""
        from lmmiqa.types import json_safe

        out: dict[str, dict[str, Any]] = {}
        for key, v in self.values.items():
            known, default = field_default(config_cls, key)
            value = json_safe(v.value)
            default = json_safe(default)
            out[key] = {
                "value": value,
                "default": default,
                "has_default": known,
                "differs": (not known) or _normalized(value) != _normalized(default),
                "source": v.source,
                "decision": v.is_decision,
            }
        return out


def field_default(config_cls: type | None, name: str) -> tuple[bool, Any]:
    """``(True, default)`` of dataclass field ``name`` of ``config_cls`` (a ``default_factory`` is called), or
    ``(False, None)`` when there is no such field or it has no default."""
    import dataclasses

    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        return False, None
    for f in dataclasses.fields(config_cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return True, f.default
            if f.default_factory is not dataclasses.MISSING:
                return True, f.default_factory()
            return False, None
    return False, None


def _normalized(value: Any) -> Any:
    """Lists and tuples compare equal; numbers by value."""
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    return value


def get_preset(presets: Mapping[str, Preset], name: str, target: str) -> Preset:
    """The preset called ``name`` among ``presets`` of ``target``; UnknownNameError listing the valid ones."""
    key = name.strip().lower()
    if key not in presets:
        if not presets:
            raise ConfigError(f"{target} has no presets (asked for {name!r})")
        raise UnknownNameError(f"preset of {target}", name, list(presets))
    return presets[key]


def apply_preset(presets: Mapping[str, Preset], name: str | None, options: Mapping[str, Any], target: str) -> dict[str, Any]:
    """``options`` over the values of preset ``name`` (explicit options win; ``None`` values count as unset).

    Args:
        presets: the target's presets (e.g. ``Scorer.presets``).
        name: the preset asked for, or None (``options`` returned unchanged, without its None values).
        options: the caller's options.
        target: what is configured, for messages.
    """
    given = {k: v for k, v in options.items() if v is not None}
    if name is None:
        return given
    return {**get_preset(presets, name, target).options(), **given}


__all__ = ["DECISION", "Preset", "PresetValue", "apply_preset", "field_default", "get_preset"]
