"""The attention function of a transformers ``attn_implementation`` name (shared by mPLUG-Owl2's modules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def attention_function(name: str | None) -> Callable[..., Any]:
    """transformers' attention function for ``name`` (``eager``, ``sdpa``, ``flash_attention_2``, ...): called as
    ``fn(module, query, key, value, attention_mask, dropout=, scaling=, is_causal=)`` with ``[B, heads, L, d]``
    tensors; returns ``([B, L, heads, d], weights)``."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    if not name or name == "eager":
        return eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    get = getattr(ALL_ATTENTION_FUNCTIONS, "get_interface", None)
    if get is not None:
        return get(name, eager_attention_forward)
    return ALL_ATTENTION_FUNCTIONS[name]


def implementation_of(config: Any) -> str:
    """The attention implementation a (root) config asks for (``sdpa`` when unset)."""
    return str(getattr(config, "_attn_implementation", None) or "sdpa")


__all__ = ["attention_function", "implementation_of"]
