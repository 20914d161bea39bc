"""Robust extraction of one JSON value from a model's free-text reply (AgenticIQA stages, METHODS §5).

Models wrap JSON in code fences, surround it with prose, leave trailing commas, or write Python-style
single-quoted strings and ``True``/``False``/``None``. :func:`extract_json` accepts those and nothing looser:

1. candidates, in order: the contents of each fenced block (```` ```json ... ``` ````, also an unclosed fence
   at the end of a truncated reply), the whole reply, then every top-level balanced ``{...}``/``[...]`` span
   found by a scanner that skips over double-quoted strings (so braces inside strings do not count);
2. each candidate is tried with :func:`json.loads` as it is, then after :func:`repair_json`: trailing commas
   before ``}``/``]`` dropped, single-quoted strings re-quoted where that is unambiguous (a quote opens a
   string only where a key or value may start, and closes it only before ``,``, ``:``, ``}``, ``]`` or the
   end, so an apostrophe in ``'it's blurry'`` stays text), and bare ``True``/``False``/``None`` outside
   strings turned into JSON literals;
3. :func:`extract_json`: the first candidate that parses to the expected type (an object by default) wins; if
   none does, :class:`~lmmiqa.errors.ParseError` says why, quoting the start of the reply.

:func:`parse_as` validates the candidates against a pydantic schema in the same order and returns the **first
that validates** (a reply that quotes the requested format before its answer, or corrects itself, is read by
its answer); when none fits, the error of the first one is raised as a :class:`ParseError`, so every failure is
counted the same way by the agent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, TypeVar

from lmmiqa.errors import ParseError

T = TypeVar("T")

_FENCE = re.compile(r"```[ \t]*(?:json5?|JSON|javascript|js)?[ \t]*\r?\n?(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:json5?|JSON|javascript|js)?[ \t]*\r?\n?(.*)\Z", re.DOTALL)
_OPENERS = {"{": "}", "[": "]"}
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}
_SNIPPET = 120


def _snippet(text: str) -> str:
    s = text.strip().replace("\n", " ")
    return repr(s[:_SNIPPET] + ("…" if len(s) > _SNIPPET else ""))


def balanced_spans(text: str) -> list[str]:
    """Top-level balanced ``{...}`` / ``[...]`` substrings of ``text``, left to right.

    Double-quoted strings (with backslash escapes) are skipped, so brackets inside them do not count. An
    unbalanced opener is skipped and scanning resumes after it.
    """
    spans: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch not in _OPENERS:
            i += 1
            continue
        stack = [_OPENERS[ch]]
        j = i + 1
        in_str = False
        while j < n and stack:
            c = text[j]
            if in_str:
                if c == "\\":
                    j += 2
                    continue
                if c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c in _OPENERS:
                stack.append(_OPENERS[c])
            elif c in ("}", "]"):
                if c != stack[-1]:
                    break
                stack.pop()
            j += 1
        if not stack:
            spans.append(text[i:j])
            i = j
        else:
            i += 1
    return spans


def _next_nonspace(text: str, k: int) -> str:
    while k < len(text) and text[k].isspace():
        k += 1
    return text[k] if k < len(text) else ""


def _prev_nonspace(out: list[str]) -> str:
    for piece in reversed(out):
        s = piece.rstrip()
        if s:
            return s[-1]
    return ""


def repair_json(text: str) -> str:
    """Fix the safe-to-fix slips of model-written JSON (see the module docstring); never guesses content."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':  # copy a double-quoted string verbatim
            j = i + 1
            while j < n:
                if text[j] == "\\":
                    j += 2
                    continue
                if text[j] == '"':
                    break
                j += 1
            out.append(text[i : j + 1])
            i = j + 1
            continue
        if c == "'" and _prev_nonspace(out) in ("", "{", "[", ",", ":"):
            j = i + 1
            buf: list[str] = []
            closed = False
            while j < n:
                d = text[j]
                if d == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    buf.append("'" if nxt == "'" else "\\" + nxt)
                    j += 2
                    continue
                if d == "'" and _next_nonspace(text, j + 1) in ("", ",", ":", "}", "]"):
                    closed = True
                    break
                buf.append('\\"' if d == '"' else d)
                j += 1
            if closed:
                out.append('"' + "".join(buf) + '"')
                i = j + 1
                continue
            out.append(c)
            i += 1
            continue
        if c == "," and _next_nonspace(text, i + 1) in ("}", "]"):
            i += 1
            continue
        if c.isalpha():
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            out.append(_PY_LITERALS.get(word, word))
            i = j
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _candidates(text: str) -> list[str]:
    cands: list[str] = []
    fenced = _FENCE.findall(text)
    cands.extend(fenced)
    if not fenced:
        m = _OPEN_FENCE.search(text)
        if m:
            cands.append(m.group(1))
    cands.append(text)
    for block in [*fenced, text]:
        cands.extend(balanced_spans(block))
    seen: set[str] = set()
    out = []
    for c in cands:
        c = c.strip()
        if c and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def iter_json(text: str, expect: type | tuple[type, ...] = dict) -> Iterator[Any]:
    """Every JSON value of type ``expect`` found in ``text``, in candidate order (see the module docstring).

    Raises:
        ParseError: ``text`` is empty, or no candidate parses to ``expect`` (raised when the iteration ends
            without having yielded anything; the message quotes the start of ``text``).
    """
    if not isinstance(text, str) or not text.strip():
        raise ParseError("empty reply: expected JSON")
    found_other: type | None = None
    yielded = False
    for cand in _candidates(text):
        for attempt in (cand, repair_json(cand)):
            try:
                value = json.loads(attempt)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(value, expect):
                yielded = True
                yield value
            else:
                found_other = type(value)
            break
    if yielded:
        return
    want = expect.__name__ if isinstance(expect, type) else "/".join(t.__name__ for t in expect)
    if found_other is not None:
        raise ParseError(f"expected a JSON {want}, found only a JSON {found_other.__name__} in {_snippet(text)}")
    raise ParseError(f"no JSON {want} found in the reply {_snippet(text)}")


def extract_json(text: str, expect: type | tuple[type, ...] = dict) -> Any:
    """The first JSON value of type ``expect`` (an object by default) found in ``text``.

    Raises:
        ParseError: no candidate parses to ``expect`` (the message quotes the start of ``text``).
    """
    return next(iter_json(text, expect))


def parse_as(text: str, schema: type[T], context: dict[str, Any] | None = None) -> T:
    """The first JSON object in ``text`` that validates against the pydantic model ``schema``.

    Candidates are tried in :func:`iter_json` order; one that does not fit is skipped, so a later object that
    fits wins. A bare JSON list is accepted when the schema names the key it stands for (``schema.list_key``).

    Args:
        text: the model's reply.
        schema: a pydantic model class.
        context: pydantic validation context (e.g. the tools a selection may name).

    Raises:
        ParseError: no JSON object, or none fits ``schema`` (the message lists the first one's problems).
    """
    import pydantic

    list_key = getattr(schema, "list_key", None)
    first_error: pydantic.ValidationError | None = None
    for value in iter_json(text, (dict, list) if list_key else dict):
        if isinstance(value, list):
            value = {list_key: value}
        try:
            return schema.model_validate(value, context=context)  # type: ignore[attr-defined,no-any-return]
        except pydantic.ValidationError as err:
            first_error = first_error or err
    if first_error is None:  # pragma: no cover - iter_json raises when it yields nothing
        raise ParseError(f"no JSON object found in the reply {_snippet(text)}")
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in first_error.errors()
    )
    raise ParseError(f"the JSON does not fit {schema.__name__}: {problems}") from first_error
