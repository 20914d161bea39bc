"""The OpenAI chat-completions wire format, as pure functions: model strings, images as data URLs, folded answer
prefixes, level candidates matched in a top-k listing, the server's cap on ``top_logprobs`` read from its error.

Used by :mod:`lmmiqa.backends.openai_http`; nothing here opens a connection.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from lmmiqa.errors import ConfigError
from lmmiqa.types import Prompt


def parse_model_url(model: str) -> tuple[str, str | None]:
    """``"http://h:p/v1#name"`` -> ``("http://h:p/v1", "name")`` (the first URL when several are given)."""
    urls, name = parse_model_urls(model)
    return urls[0], name


def parse_model_urls(model: str) -> tuple[list[str], str | None]:
    """``"http://a:8000/v1,http://b:8000/v1#name"`` -> ``(["http://a:8000/v1", "http://b:8000/v1"], "name")``.

    Several comma-separated URLs are replicas of one model (each an OpenAI-compatible server serving it); the
    part after ``#`` is the served model name, shared by all (without it, the first server's first listed
    model is used).

    Raises:
        ConfigError: an empty URL, one that is not ``http(s)://``, or the same URL twice.
    """
    body, _, name = str(model).partition("#")
    urls = [u.strip().rstrip("/") for u in body.split(",")]
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad or not urls:
        raise ConfigError(
            "the openai backend needs model='http://host:port/v1#served-name' (several replicas: "
            f"'http://a:8000/v1,http://b:8000/v1#served-name'), got {model!r}"
        )
    if len(set(urls)) != len(urls):
        raise ConfigError(f"the same server URL is listed twice in {model!r}")
    for u in urls:
        try:
            parts = urlsplit(u)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number in 0..65535
        except ValueError as err:
            raise ConfigError(f"{u!r} in model {model!r} is not a valid URL: {err}") from err
        if not parts.hostname:
            raise ConfigError(f"{u!r} in model {model!r} names no host (http://host:port/v1)")
    return urls, (name.strip() or None)


def image_data_url(image: Any, fmt: str = "png") -> str:
    """RGB PIL image -> ``data:image/...;base64,...``."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=95)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def fold_prefix(prompt: Prompt) -> Prompt:
    """Move the answer prefix into the last user instruction (for servers that cannot continue a message)."""
    if not prompt.answer_prefix:
        return prompt
    from lmmiqa.types import Message

    msgs = list(prompt.messages)
    for i in range(len(msgs) - 1, -1, -1):
        if msgs[i].role == "user":
            note = f'\nAnswer with a single word that completes: "{prompt.answer_prefix} ..."'
            msgs[i] = Message("user", (*msgs[i].content, note))
            break
    return Prompt(tuple(msgs), "")


def match_candidates(
    top: Sequence[tuple[str, float]], candidates: Sequence[str], rule: str = "surface"
) -> np.ndarray:
    """Log-probability of each candidate from a top-k list.

    Args:
        top: (token text, log-probability) pairs, each token listed once.
        candidates: the level candidates as produced in context (``" good"``).
        rule: ``"exact"`` — a token counts only when its text equals the candidate (one vocabulary entry, as the
            in-process backends read); ``"surface"`` — surface variants (case, surrounding whitespace) are summed.

    Returns:
        ``-inf`` for candidates not present in ``top``.
    """
    if rule not in ("exact", "surface"):
        raise ConfigError(f"unknown candidate rule {rule!r}; known: exact, surface")
    out = np.full(len(candidates), -np.inf)
    norm = list(candidates) if rule == "exact" else [c.strip().lower() for c in candidates]
    for token, lp in top:
        key = token if rule == "exact" else token.strip().lower()
        for j, c in enumerate(norm):
            if key == c and lp is not None and math.isfinite(lp):
                out[j] = np.logaddexp(out[j], lp)
    return out


def top_from_content(first: Any) -> list[tuple[str, float]]:
    """(token, log-probability) pairs of one ``logprobs.content`` entry: its ``top_logprobs``, plus the chosen
    token only when the server did not list it there (so that it is never counted twice)."""
    top = [(t.token, t.logprob) for t in (getattr(first, "top_logprobs", None) or [])]
    if first.token not in {t for t, _ in top}:
        top.append((first.token, first.logprob))
    return top


def listing_floor(first: Any, requested: int) -> float | None:
    """The lowest log-probability of a ``logprobs.content`` entry's ``top_logprobs`` when the listing was cut at
    ``requested`` entries (every token it leaves out is at most that likely), else None (the server listed fewer
    than asked: nothing is hidden)."""
    listed = [float(t.logprob) for t in (getattr(first, "top_logprobs", None) or []) if t.logprob is not None]
    if len(listed) < int(requested):
        return None
    finite = [x for x in listed if math.isfinite(x)]
    return min(finite) if finite else None


_CAP_PATTERNS = (
    r"max(?:imum)?\s+allowed\D{0,12}(\d+)",  # vLLM: "... which is greater than max allowed: 20"
    r"<=\s*(\d+)",  # OpenAI: "Expected a value <= 20"
    r"(?:at most|no more than|less than or equal to|maximum(?: value)?(?: is| of)?)\D{0,12}(\d+)",
)


def logprobs_cap(message: str, requested: int) -> int | None:
    """The largest ``top_logprobs`` a server accepts, read from the error it answered to ``requested``.

    Returns:
        The cap (< ``requested``) when the message is about log-probabilities and names one; None when the
        error is not about log-probabilities (or names no smaller number).
    """
    text = str(message)
    if "logprob" not in text.lower():
        return None
    for pat in _CAP_PATTERNS:
        m = re.search(pat, text, flags=re.IGNORECASE)
        if m and 0 < int(m.group(1)) < int(requested):
            return int(m.group(1))
    return None
