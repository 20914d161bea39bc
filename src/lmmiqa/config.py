"""Helpers for typed config dataclasses: build from keyword options with clear errors on unknown names."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from lmmiqa.errors import ConfigError

T = TypeVar("T")


def build_config(cls: type[T], options: dict[str, Any], *, what: str) -> T:
    """Instantiate dataclass ``cls`` from ``options``; unknown names raise ConfigError listing the valid ones."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {what}; valid: {', '.join(sorted(fields))}")
    try:
        return cls(**options)
    except TypeError as err:
        raise ConfigError(f"invalid options for {what}: {err}") from err


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-safe dict of a config dataclass."""
    from lmmiqa.types import json_safe

    return json_safe(dataclasses.asdict(cfg))
