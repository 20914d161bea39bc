"""The backend protocol every method talks to.

A backend turns :class:`~lmmiqa.types.Prompt` objects into (a) log-probabilities of single-token candidates
at the answer position (one batched forward pass), (b) generated text, and (c) where it can, the last-layer
hidden state at the answer position. Each backend converts messages into its own wire format itself.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from lmmiqa.errors import UnsupportedError
from lmmiqa.families.base import DEFAULT_CONVENTIONS, PromptConventions
from lmmiqa.types import Prompt


class Backend(ABC):
    """Abstract backend.

    Attributes:
        name: registered backend name.
        model_id: the model id/path/URL as given by the user (reported in ``ScoreResult.model``).
        supports_multi_image: whether one prompt may hold several images.
        supports_hidden_states: whether :meth:`hidden_states` works.
        prefix_mode: ``"continue"`` when the answer prefix is continued exactly, ``"folded"`` when it had to
            be folded into the instruction (servers that cannot continue a message).
    """

    name: ClassVar[str] = "base"
    supports_multi_image: bool = True
    supports_hidden_states: bool = False
    prefix_mode: str = "continue"

    def __init__(self) -> None:
        self.model_id: str = ""

    @abstractmethod
    def level_logprobs(self, prompts: Sequence[Prompt], candidates: Sequence[str]) -> np.ndarray:
        """Log-probabilities (under the full vocabulary) of each candidate as the next token.

        Args:
            prompts: B prompts; each answer starts right after ``prompt.answer_prefix``.
            candidates: C candidate strings as they would be produced right after the answer prefix (e.g.
                ``" good"`` after a prefix without a trailing space; ``LevelScale.candidates(prefix)``). Each must
                be one token. A backend that renders the chat template itself (transformers) re-forms the leading
                space from the full context the model reads (template end + prefix;
                :func:`lmmiqa.levels.candidates_in_context`) and resolves the ids there.

        Returns:
            float64 array [B, C]. ``-inf`` marks a candidate the backend could not see (e.g. outside an
            API's top-k); a row of all ``-inf`` means the item failed.
        """

    @abstractmethod
    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int = 256, temperature: float = 0.0
    ) -> list[str]:
        """Greedy (temperature 0) or sampled continuations of each prompt after its answer prefix."""

    def hidden_states(self, prompts: Sequence[Prompt]) -> np.ndarray:
        """Last-layer hidden state at the answer position, [B, H] (transformers backend only)."""
        raise UnsupportedError(f"the {self.name} backend cannot return hidden states")

    def conventions(self) -> PromptConventions:
        """How the served model expects prompts (image position, system prompt, padding): what method options
        left at ``"auto"`` follow. The default is the chat-template convention of the models transformers ships; a
        natively implemented family (:mod:`lmmiqa.families`) declares its own."""
        return DEFAULT_CONVENTIONS

    def describe(self) -> dict[str, Any]:
        """JSON-safe description for run configs and ``ScoreResult.details``."""
        return {"backend": self.name, "model": self.model_id}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (servers, GPU memory)."""


_BACKEND_CACHE: dict[tuple[Any, ...], tuple[tuple[tuple[str, int, int], ...], Backend]] = {}
_LOCK = threading.Lock()


def create_backend(name: str = "transformers", model: str | None = None, *, cache: bool = True, **options: Any) -> Backend:
    """Create (or reuse) a backend by registered name.

    Backends are cached per (name, model, options) so that several scorers in one process (e.g. an ensemble
    and a teacher, or the service's methods) share one copy of the weights; a local folder whose files changed since
    it was loaded (retrained or exported into the same place) is loaded again. Pass ``cache=False`` to opt out.
    """
    from lmmiqa import registry

    cls = registry.resolve("backend", name)
    key = (registry.canonical("backend", name), model, tuple(sorted((k, repr(v)) for k, v in options.items())))
    stamp = folder_fingerprint(model)
    if cache:
        with _LOCK:
            cached = _BACKEND_CACHE.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
    backend = cls.from_options(model=model, **options)
    if cache:
        with _LOCK:
            cached = _BACKEND_CACHE.get(key)
            if cached is None or cached[0] != stamp:
                # a folder rewritten since (retrained, re-exported): the old copy stays with the scorers that hold it
                _BACKEND_CACHE[key] = cached = (stamp, backend)
            return cached[1]
    return backend


def folder_fingerprint(model: str | None) -> tuple[tuple[str, int, int], ...]:
    """Name, size and modification time of the top-level files of a local model folder (empty for a hub id, a
    URL or a missing path): the backend cache reloads a folder whose files changed since it was loaded."""
    if not model or not os.path.isdir(model):
        return ()
    try:
        with os.scandir(model) as entries:
            stats = [(e.name, e.stat()) for e in entries if e.is_file()]
    except OSError:
        return ()
    return tuple(sorted((n, st.st_size, st.st_mtime_ns) for n, st in stats))


def clear_backend_cache() -> None:
    """Forget cached backends (tests; freeing memory)."""
    with _LOCK:
        for _stamp, b in _BACKEND_CACHE.values():
            b.close()
        _BACKEND_CACHE.clear()
