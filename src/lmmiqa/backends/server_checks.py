"""What the openai backend checks once, when it is created: that each server answers and serves the model, and
whether the server really continues an answer prefix.

**Reachable.** ``GET /models`` on every replica: connection refused, DNS, TLS and timeouts, a refused API key
(401/403), a URL without the OpenAI API (404) and a model name the server does not serve become one
:class:`~lmmiqa.errors.ServerUnavailableError` naming the URL and what to check (a run-level error: the command
line exits 2 before any image is scored).

**Continues a prefix.** Servers that look OpenAI-compatible may ignore ``continue_final_message``: llama-cpp-python's
own server closes the assistant turn and opens a new one, answers 200 OK, and its log-probabilities are those of
another context (1.4-1.7 nats off). Three one-token text requests tell it from ``usage.prompt_tokens``: the user
turn alone with the generation prompt (``n0``), then the answer prefixes ``"Yes"`` (``n1``) and ``"Yes Yes"``
(``n2``) to be continued. A server that continues reads ``n0 + t("Yes") + t(" Yes")`` tokens for the second, one
that closes the turn adds its end-of-turn and a new assistant header (4-5 tokens with ChatML, Gemma or Llama 3
templates): ``(n1 - n0) - (n2 - n1)`` is 0 (±1 for a tokenizer that splits "Yes" and " Yes" differently) when the
prefix is continued and ≥ 2 when it is not. The same answers show whether the server repeats the prefix in
``message.content`` (llama.cpp's ``llama-server`` does, vLLM does not), so that ``generate()`` returns only the
new text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmmiqa.errors import ServerUnavailableError

log = logging.getLogger(__name__)

#: the user turn of the continuation probe
PROBE_USER = "Answer with one word."
#: the two answer prefixes of the continuation probe (the second repeats the first word once more)
PROBE_PREFIXES = ("Yes", "Yes Yes")
#: (n1 - n0) - (n2 - n1) at or above this means the server closed the assistant turn
CLOSED_TURN_TOKENS = 2


@dataclass(frozen=True)
class ContinuationProbe:
    """Outcome of :func:`probe_continuation`.

    Attributes:
        continues: True (the prefix is continued), False (the server closes the turn), None (cannot tell: no
            ``usage.prompt_tokens``, or counts that make no sense).
        echoes_prefix: the server repeats the assistant prefix at the start of ``message.content``.
        counts: the prompt-token counts ``(n0, n1, n2)`` read (None where missing).
        detail: a sentence for messages and logs.
    """

    continues: bool | None
    echoes_prefix: bool
    counts: tuple[int | None, int | None, int | None]
    detail: str


def _prompt_tokens(resp: Any) -> int | None:
    usage = getattr(resp, "usage", None)
    n = getattr(usage, "prompt_tokens", None) if usage is not None else None
    return int(n) if isinstance(n, int) and n > 0 else None


def _content(resp: Any) -> str:
    try:
        return str(resp.choices[0].message.content or "")
    except (AttributeError, IndexError):
        return ""


def judge_continuation(n0: int | None, n1: int | None, n2: int | None) -> tuple[bool | None, str]:
    """Decide from the three prompt-token counts of the probe (pure; see the module docstring)."""
    if n0 is None or n1 is None or n2 is None:
        return None, "the server reports no usage.prompt_tokens, so continuation cannot be checked"
    word = n2 - n1
    extra = (n1 - n0) - word
    if word <= 0 or n1 <= n0:
        return None, f"prompt-token counts {n0}, {n1}, {n2} do not grow with the prefix"
    if extra >= CLOSED_TURN_TOKENS:
        return False, (
            f"it ignores continue_final_message: an answer prefix costs {extra} more prompt tokens than its own text "
            "(the assistant turn is closed and a new one opened), so its log-probabilities would be read in another "
            "context"
        )
    return True, f"the answer prefix is continued (prompt tokens {n0}, {n1}, {n2})"


def probe_continuation(create: Callable[..., Any]) -> ContinuationProbe:
    """Run the three probe requests with ``create(messages, extra_body)`` (one token each, temperature 0).

    Raises whatever ``create`` raises for the continued requests (a server that rejects ``continue_final_message``
    answers 400 there; the caller folds or refuses).
    """
    user = {"role": "user", "content": PROBE_USER}
    r0 = create([user], {"add_generation_prompt": True})
    cont = {"continue_final_message": True, "add_generation_prompt": False}
    r1 = create([user, {"role": "assistant", "content": PROBE_PREFIXES[0]}], cont)
    r2 = create([user, {"role": "assistant", "content": PROBE_PREFIXES[1]}], cont)
    counts = (_prompt_tokens(r0), _prompt_tokens(r1), _prompt_tokens(r2))
    continues, detail = judge_continuation(*counts)
    echoes = _content(r2).lstrip().startswith(PROBE_PREFIXES[1])
    return ContinuationProbe(continues, echoes, counts, detail)


def strip_echo(text: str, prefix: str) -> str:
    """``text`` without a leading copy of the answer ``prefix`` (servers that echo it, e.g. llama-server)."""
    if prefix and text.startswith(prefix):
        return text[len(prefix):]
    return text


def model_problem(url: str, served: list[str], wanted: str | None) -> str | None:
    """Why ``wanted`` cannot be used on a server that lists ``served`` (None when it can)."""
    if wanted is None:
        return None if served else f"{url} lists no model (GET /models is empty)"
    if wanted in served:
        return None
    listed = ", ".join(served[:20]) + (" ..." if len(served) > 20 else "") if served else "(none)"
    hint = f" Use --model '{url}#{served[0]}'." if served else ""
    return f"{url} does not serve a model named {wanted!r}; it serves: {listed}.{hint}"


def status_problem(url: str, status: int, message: str, api_key_env: str) -> str:
    """Words for an HTTP error answered by ``GET /models`` (or by the first request)."""
    if status in (401, 403):
        return (f"{url} refused the API key ({status}: {message}): set ${api_key_env} to the server's key "
                "(or name another variable with backend option api_key_env)")
    if status == 404:
        return (f"{url} has no OpenAI API there (404 on /models: {message}): is the base URL right? It usually ends "
                "in /v1, e.g. http://127.0.0.1:8000/v1")
    return f"{url} answered {status} to GET /models: {message}"


def unavailable(url: str, why: str) -> ServerUnavailableError:
    """The run-level error for one server, with what to check."""
    return ServerUnavailableError(f"cannot use the model server at {url}: {why}")
