"""Model families lmmiqa runs natively where transformers has no implementation (see :mod:`.base`).

:func:`family_for` tells, from a checkpoint's ``config.json``, whether it belongs to such a family; the transformers
backend calls :func:`prepare` before loading any model, which registers the family with transformers (so its
ordinary ``from_pretrained`` builds lmmiqa's classes, never the hub's remote code) or, for a checkpoint whose
``model_type`` neither transformers nor lmmiqa knows and which ships remote code, refuses with one message naming
the families lmmiqa runs natively and the explicit opt-in (``--trust-remote-code`` / ``trust_remote_code=True``).
"""

from __future__ import annotations

from typing import Any

from lmmiqa.errors import ModelLoadError, spell
from lmmiqa.families.base import DEFAULT_CONVENTIONS, Family, PromptConventions


def native_families() -> dict[str, Family]:
    """``model_type`` -> :class:`Family` of every family lmmiqa implements (resolving the registry lazily)."""
    from lmmiqa import registry

    return {name: registry.resolve("family", name) for name in registry.names("family")}


def family_of(model_type: str | None) -> Family | None:
    """The native family for a ``model_type`` (None when lmmiqa has none: transformers' own, or unknown)."""
    from lmmiqa import registry

    if not model_type or model_type not in registry.FAMILIES:
        return None
    return registry.resolve("family", model_type)


def read_config(name_or_path: str, **hub_kwargs: Any) -> dict[str, Any] | None:
    """A checkpoint's ``config.json`` (local folder, or hub id from the cache/hub), None when absent."""
    from lmmiqa.hub import read_checkpoint_json

    return read_checkpoint_json(name_or_path, "config.json", **hub_kwargs)


def family_for(name_or_path: str, **hub_kwargs: Any) -> Family | None:
    """The native family of a checkpoint, from the ``model_type`` of its ``config.json`` (None: not a native one)."""
    config = read_config(name_or_path, **hub_kwargs)
    return family_of(config.get("model_type")) if config else None


def _known_to_transformers(model_type: str) -> bool:
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:  # reported by the loader that needs transformers
        return True
    return model_type in CONFIG_MAPPING


def remote_code_message(name_or_path: str, model_type: str) -> str:
    """The one message for a checkpoint whose architecture only exists as hub remote code."""
    natives = native_families()
    listed = ", ".join(f"{k} ({f.title})" for k, f in sorted(natives.items())) or "none yet"
    opt_in = spell(cli="--trust-remote-code", python="trust_remote_code=True")
    return (
        f"{name_or_path!r} has model_type {model_type!r}, which neither transformers nor lmmiqa implements: its "
        f"config.json points to code on the hub (auto_map). lmmiqa runs these families natively: {listed}. To run "
        f"the checkpoint's own code instead, opt in explicitly with {opt_in} (it runs unreviewed code, and such code "
        "often needs an older transformers than the one installed)."
    )


def prepare(name_or_path: str, *, trust_remote_code: bool = False, **hub_kwargs: Any) -> Family | None:
    """Get ready to load a checkpoint with transformers' ``from_pretrained``.

    A native family is registered with transformers and returned (load its processor with
    :meth:`Family.load_processor`). A checkpoint that needs remote code lmmiqa does not replace raises
    :class:`~lmmiqa.errors.ModelLoadError` unless ``trust_remote_code`` is set. Anything else returns None (load it
    as usual).
    """
    config = read_config(name_or_path, **hub_kwargs)
    if not config:
        return None
    model_type = config.get("model_type")
    family = family_of(model_type)
    if family is not None:
        family.register()
        return family
    needs_remote = isinstance(config.get("auto_map"), dict) and bool(config["auto_map"])
    if needs_remote and not trust_remote_code and isinstance(model_type, str) and not _known_to_transformers(model_type):
        raise ModelLoadError(remote_code_message(name_or_path, model_type))
    return None


__all__ = [
    "DEFAULT_CONVENTIONS",
    "Family",
    "PromptConventions",
    "family_for",
    "family_of",
    "native_families",
    "prepare",
    "read_config",
    "remote_code_message",
]
