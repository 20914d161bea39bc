"""The public names of served models: what results, ``/v1/methods`` and ``/healthz`` call a model instead of
where the server keeps it (issue 23 §8, issue 24 §7).

The operator chooses the name with ``--model-name`` (``ServiceConfig.model_name``); by default a local folder or
file is named by its last part, a hub id is kept as it is (``Qwen/Qwen3-VL-8B-Instruct``) and an
OpenAI-compatible endpoint by the model name after ``#`` (never its URL). Every other occurrence of a model's
location in an answer (an error message, an ensemble's per-model details) is replaced by its public name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

#: a hub id: ``owner/name`` with the characters the hub allows
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def default_public_name(model: str) -> str:
    """The name a model is served under when the operator chose none: the model name of an endpoint
    (``URL#name`` -> ``name``), a hub id as it is, else the last part of the path (a local folder or file)."""
    text = str(model)
    if "#" in text and "://" in text:
        text = text.rsplit("#", 1)[1]
        return text or "model"
    if _HUB_ID.match(text) and not os.path.exists(text):
        return text
    return text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "model"


def model_strings(model: Any) -> list[str]:
    """The model string(s) of a scorer's ``model_name`` (a string, a list for ensembles, or None)."""
    if model is None:
        return []
    if isinstance(model, (list, tuple)):
        return [str(m) for m in model]
    return [str(model)]


class ModelNames:
    """Maps the model strings a server loaded to their public names and scrubs answers of the former.

    Args:
        default_model: the default scorer's ``model_name`` (a string, a list for ensembles, or None).
        chosen: the operator's name (``--model-name``); for an ensemble, one name per model separated by commas.

    Raises:
        ValueError: an ensemble's chosen names do not match its models in number.
    """

    def __init__(self, default_model: Any, chosen: str | None = None) -> None:
        self.names: dict[str, str] = {}
        models = model_strings(default_model)
        if chosen:
            parts = [p.strip() for p in chosen.split(",")] if len(models) > 1 else [chosen.strip()]
            if len(models) > 1 and len(parts) != len(models):
                raise ValueError(
                    f"--model-name {chosen!r} names {len(parts)} model(s) but the served ensemble has {len(models)}; "
                    "give one name per model, separated by commas"
                )
            for m, p in zip(models, parts or [chosen]):
                self.names[m] = p
        self.add(models)

    def add(self, models: Iterable[str]) -> None:
        """Name further model strings (other served methods' artifacts) by their default public names."""
        for m in models:
            self.names.setdefault(str(m), default_public_name(str(m)))
        # the longest location first, so that a folder inside another is replaced whole
        pairs: dict[str, str] = {}
        for m, name in self.names.items():
            for form in _forms(m):
                if form != name and len(form) > 1:
                    pairs.setdefault(form, name)
        self._pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def public(self, model: Any) -> Any:
        """The public name(s) of a result's ``model`` (a string, a list, or None)."""
        if model is None:
            return None
        if isinstance(model, (list, tuple)):
            return [self.public(m) for m in model]
        text = str(model)
        name = self.names.get(text)
        if name is None:
            self.add([text])
            name = self.names[text]
        return name

    def scrub(self, value: Any) -> Any:
        """``value`` (a JSON-safe structure) with every model location replaced by its public name."""
        if isinstance(value, str):
            for form, name in self._pairs:
                if form in value:
                    value = value.replace(form, name)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value

    def result(self, d: dict[str, Any]) -> dict[str, Any]:
        """A result dict (``ScoreResult.to_dict()``) as served: public model name, no model location."""
        out = dict(d)
        out["model"] = self.public(d.get("model"))
        if d.get("error"):
            out["error"] = self.scrub(d["error"])
        if d.get("details"):
            out["details"] = self.scrub(d["details"])
        return out


def _forms(model: str) -> list[str]:
    """The spellings of a model's location that may appear in a message: as given, absolute, resolved; for an
    endpoint its URL part."""
    forms = [model]
    if "#" in model and "://" in model:
        forms.append(model.rsplit("#", 1)[0])
        return forms
    if os.path.exists(model) or model.startswith(("/", "~", ".")):
        expanded = os.path.expanduser(model)
        forms += [expanded, os.path.abspath(expanded), os.path.realpath(expanded)]
    return list(dict.fromkeys(forms))
