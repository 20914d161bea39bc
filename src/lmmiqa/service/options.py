"""Per-request method options for the HTTP API, validated by pydantic models derived from config dataclasses.

A request may set the options of its method that do not change what the server has loaded, where it reads
files or how much work one request may cause: by default the method config's ``bool``/``int``/``float``/``str``
fields, minus the server-level ones (:data:`SERVER_FIELDS`: model, backend, device, batch size, limits,
generation budget, ...) and minus string fields whose
names suggest a file, folder, URL or model (:data:`UNSAFE_NAME_PARTS`), so that a client can never make the
server open a path or load a different model. A method can state its list explicitly with a
``request_options`` class attribute (a collection of config field names) on its scorer class; the server-level
fields are removed from it too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from lmmiqa.errors import ConfigError

#: config fields fixed by the server (never settable per request): what is loaded, and what bounds the work or
#: memory of one request (a client must not be able to ask for a 100 000-token generation or keep masks forever)
SERVER_FIELDS = frozenset(
    {
        "model",
        "models",
        "backend",
        "device",
        "dtype",
        "backend_options",
        "batch_size",
        "max_pixels",
        "min_pixels",
        "max_image_pixels",
        "max_batch_tokens",
        "prefetch",
        "input_resize",
        "max_bytes",
        "decode_workers",
        "max_new_tokens",
        "tool_workers",
        "keep_masks",
        "segmenter",
        "segmenter_options",
        "preset",
        "trust_remote_code",
    }
)

#: a ``str`` field whose name contains one of these is not settable per request
UNSAFE_NAME_PARTS = (
    "path",
    "dir",
    "file",
    "bank",
    "adapter",
    "checkpoint",
    "url",
    "root",
    "cache",
    "model",
    "weights",
    "student",
    "teacher",
    "folder",
)

_SCALARS = (bool, int, float, str)


def _scalar_kind(tp: Any) -> type | None:
    """The scalar type behind ``tp`` (``X``, ``X | None``, ``Literal[...]``), or None when not scalar."""
    if tp in _SCALARS:
        return tp  # type: ignore[no-any-return]
    origin = typing.get_origin(tp)
    if origin is Literal:
        kinds = {type(v) for v in typing.get_args(tp)}
        return kinds.pop() if len(kinds) == 1 and next(iter(kinds)) in _SCALARS else None
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _scalar_kind(args[0])
    return None


def request_fields(scorer_cls: type) -> dict[str, Any]:
    """Config field name -> type annotation of the options a request may set for ``scorer_cls``."""
    cfg_cls = scorer_cls.config_cls
    hints = typing.get_type_hints(cfg_cls)
    explicit = getattr(scorer_cls, "request_options", None)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg_cls):
        tp = hints.get(f.name, Any)
        if f.name in SERVER_FIELDS or f.name.startswith("_"):
            continue  # even when the method lists it: the server's limits come first
        if explicit is not None:
            if f.name in explicit:
                out[f.name] = tp
            continue
        kind = _scalar_kind(tp)
        if kind is None:
            continue
        if kind is str and any(part in f.name.lower() for part in UNSAFE_NAME_PARTS):
            continue
        out[f.name] = tp
    return out


_MODEL_CACHE: dict[type, Any] = {}


def options_model(scorer_cls: type) -> Any:
    """A pydantic model of the per-request options of ``scorer_cls`` (unknown names are rejected)."""
    if scorer_cls not in _MODEL_CACHE:
        import pydantic

        fields = {name: (tp | None, pydantic.Field(default=None)) for name, tp in request_fields(scorer_cls).items()}
        name = "".join(part.capitalize() for part in str(getattr(scorer_cls, "name", "method")).replace("_", "-").split("-"))
        _MODEL_CACHE[scorer_cls] = pydantic.create_model(
            f"{name}Options",
            __config__=pydantic.ConfigDict(extra="forbid"),
            **fields,
        )
    return _MODEL_CACHE[scorer_cls]


def validate_options(scorer_cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate request options for ``scorer_cls``; returns only the options that were set.

    Raises:
        ConfigError: an option is unknown, not settable per request, or has the wrong type (the message lists
            the options that are accepted).
    """
    import pydantic

    model = options_model(scorer_cls)
    try:
        parsed = model.model_validate(dict(raw))
    except pydantic.ValidationError as err:
        accepted = ", ".join(sorted(model.model_fields)) or "(none)"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(
            f"invalid options for method {scorer_cls.name!r}: {problems}. Options a request may set: {accepted}"
        ) from err
    return {k: v for k, v in parsed.model_dump().items() if v is not None}


def options_schema(scorer_cls: type) -> dict[str, Any]:
    """JSON schema of the per-request options (for ``GET /v1/methods`` and the web page)."""
    return options_model(scorer_cls).model_json_schema()  # type: ignore[no-any-return]
