"""Result and prompt types shared by every part of lmmiqa.

All result types are frozen dataclasses with a JSON-safe ``to_dict()``; the CLI, the Python API and the
HTTP API emit exactly those dictionaries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, paths and non-finite floats into JSON-safe values.

    NaN and infinities become ``None`` (JSON has no representation for them).
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if hasattr(value, "to_dict"):
        return json_safe(value.to_dict())
    if hasattr(value, "__fspath__"):
        return str(value)
    return str(value)


@dataclass(frozen=True)
class ScoreResult:
    """The quality of one image as judged by one method.

    Attributes:
        image: the path as given, or ``<memory:i>`` for in-memory inputs (i = position in the call).
        score: the score in the method's own unit, or ``None`` when this item failed (see ``error``).
        higher_is_better: true for every MLLM method; false for tools such as NIQE/BRISQUE.
        scale: ``(low, high)`` of the score, or ``None`` when unbounded.
        method: registered method name.
        model: model id/path, a list of them for ensembles, or ``None`` for model-free tools.
        probabilities: level value as a string (``"1"``..``"K"``) -> probability, in level order, or ``None``.
        details: method-specific JSON-safe details (level words, argmax, std, regions, references, trace...).
        error: ``None`` on success, else why this item failed.
        timings: named durations in seconds (e.g. ``load``, ``forward``, ``total``).
    """

    image: str
    score: float | None
    method: str
    higher_is_better: bool = True
    scale: tuple[float, float] | None = None
    model: str | list[str] | None = None
    probabilities: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the item was scored."""
        return self.error is None and self.score is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary with a fixed key order (the on-the-wire format everywhere)."""
        return {
            "image": self.image,
            "score": json_safe(self.score),
            "higher_is_better": self.higher_is_better,
            "scale": json_safe(list(self.scale)) if self.scale is not None else None,
            "method": self.method,
            "model": json_safe(self.model),
            "probabilities": json_safe(self.probabilities),
            "details": json_safe(self.details),
            "error": self.error,
            "timings": json_safe(self.timings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreResult:
        """Inverse of :meth:`to_dict` (used when resuming from JSONL)."""
        scale = data.get("scale")
        return cls(
            image=data["image"],
            score=data.get("score"),
            method=data["method"],
            higher_is_better=bool(data.get("higher_is_better", True)),
            scale=tuple(scale) if scale is not None else None,  # type: ignore[arg-type]
            model=data.get("model"),
            probabilities=data.get("probabilities"),
            details=dict(data.get("details") or {}),
            error=data.get("error"),
            timings=dict(data.get("timings") or {}),
        )

    @classmethod
    def failure(
        cls,
        image: str,
        method: str,
        error: str,
        *,
        higher_is_better: bool = True,
        scale: tuple[float, float] | None = None,
        model: str | list[str] | None = None,
        timings: dict[str, float] | None = None,
    ) -> ScoreResult:
        """A result for an item that could not be scored."""
        return cls(
            image=image,
            score=None,
            method=method,
            higher_is_better=higher_is_better,
            scale=scale,
            model=model,
            error=error,
            timings=dict(timings or {}),
        )


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Message:
    """One chat message. ``content`` mixes text (str) and images (PIL.Image.Image), in order."""

    role: str
    content: tuple[Any, ...]

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {self.role!r}; known: system, user, assistant")
        if isinstance(self.content, (str, bytes)):
            object.__setattr__(self, "content", (self.content,))
        else:
            object.__setattr__(self, "content", tuple(self.content))

    @property
    def images(self) -> list[Any]:
        """The images of this message, in order."""
        return [c for c in self.content if not isinstance(c, str)]

    @property
    def text(self) -> str:
        """The text parts joined (images omitted)."""
        return "".join(c for c in self.content if isinstance(c, str))


@dataclass(frozen=True)
class Prompt:
    """A chat prompt plus the answer prefix the model continues from.

    ``answer_prefix`` is appended after the chat template's generation prompt (transformers), or sent as a
    partial assistant message to be continued (OpenAI-compatible servers).
    """

    messages: tuple[Message, ...]
    answer_prefix: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))

    @property
    def images(self) -> list[Any]:
        """All images of the prompt in the order they appear."""
        out: list[Any] = []
        for m in self.messages:
            out.extend(m.images)
        return out

    @classmethod
    def simple(
        cls,
        user: Sequence[Any],
        *,
        system: str | None = None,
        answer_prefix: str = "",
    ) -> Prompt:
        """A system message (optional) and one user turn."""
        msgs: list[Message] = []
        if system:
            msgs.append(Message("system", (system,)))
        msgs.append(Message("user", tuple(user)))
        return cls(tuple(msgs), answer_prefix)


# --------------------------------------------------------------------------- misc shared records


@dataclass(frozen=True)
class Region:
    """A segmented region: bounding box ``[x0, y0, x1, y1]`` (pixels, exclusive end) and mask area (pixels)."""

    bbox: tuple[int, int, int, int]
    area: int
    kind: str = "mask"  # "mask" or "complement"

    def to_dict(self) -> dict[str, Any]:
        return {"bbox": list(self.bbox), "area": int(self.area), "kind": self.kind}


@dataclass(frozen=True)
class Reference:
    """A rated reference image retrieved from a bank."""

    id: str
    path: str
    mos: float
    bin: int
    distance: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "mos": self.mos, "bin": self.bin, "distance": self.distance}
