"""Covered mass: the first sign that a prompt, chat template or model does not fit (METHODS §0).

Every MLLM method reads its score from a softmax over a closed set of level tokens. That softmax always returns
a score, even when the model meant to write something else: a thinking template whose next token is
``<think>``, a model that answers "The ...", a wrong answer prefix, a level that the template makes unlikely,
or random weights. The *covered mass* — the full-vocabulary probability of the level tokens at the answer
position (:func:`lmmiqa.levels.covered_mass`, reported as ``details.covered_mass``) — shows it: a model that
fits puts most of its next-token probability on the levels (typically > 0.9 for Q-Align's words after
"The quality of the image is"), one that does not puts almost none there.

:func:`check_covered_mass` warns (a :class:`LowCoveredMassWarning`, printed on stderr by the command line as one
line, ``warning: ...``; see :mod:`lmmiqa.logs`) when
more than half of a batch has a covered mass below :data:`COVERED_MASS_THRESHOLD` (0.5: less than half of the
model's answer is a level, so the score is mostly a renormalisation of tokens the model did not mean to write),
with the model's most likely next tokens, once per run (per model and candidate set in a process;
:func:`reset_low_mass_warnings` re-arms it).

A server's top-k listing can also leave levels out (``top_logprobs`` ≤ 20 on OpenAI's API and vLLM's default).
They are not silently zero: :func:`missing_level_details` reports them per item (``details.missing_levels``: the
levels, the ``top_logprobs`` asked, the log-probability each is at most, and the bound on the score error from
:func:`lmmiqa.levels.missing_level_bounds`), and :func:`check_missing_levels` warns once per run
(:class:`MissingLevelsWarning`). :func:`check_levels` runs both checks for code that reads level log-probabilities
itself (the agentic summarizer, LEAF's pair prompts).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmmiqa.errors import LmmiqaWarning

log = logging.getLogger(__name__)

#: Covered mass below which an item counts as "low" (less than half of the next-token probability is a level).
COVERED_MASS_THRESHOLD = 0.5
#: Warn when more than this share of a batch is low ("most of a batch").
LOW_SHARE = 0.5
#: How many of the model's top next tokens the warning lists.
TOP_K = 8
#: Warn about levels missing from a server's listing when one could hold more than this closed-set probability
#: (below it they cannot move a score on a 1-5 scale by more than a few thousandths; details still list them).
MISSING_WARN_PROBABILITY = 1e-3


class CoverageWarning(LmmiqaWarning):
    """Base of the warnings about how much of the model's answer the level tokens explain."""


class LowCoveredMassWarning(CoverageWarning):
    """The level tokens hold little of the model's next-token probability: prompt, template or model do not fit."""


class MissingLevelsWarning(CoverageWarning):
    """A server's top-k listing left some levels out: their probability is bounded, not known."""


_WARNED: set[tuple[str, tuple[str, ...]]] = set()
_WARNED_MISSING: set[tuple[str, tuple[str, ...]]] = set()
_LOCK = threading.Lock()


def reset_low_mass_warnings() -> None:
    """Forget which (model, candidates) pairs were warned about, so that the next low batch warns again."""
    with _LOCK:
        _WARNED.clear()
        _WARNED_MISSING.clear()


def low_mass_share(mass: Sequence[float] | np.ndarray, threshold: float = COVERED_MASS_THRESHOLD) -> float:
    """Share of the rows whose covered mass is below ``threshold`` (NaN rows count as low; 0.0 for no rows)."""
    m = np.asarray(mass, dtype=np.float64).reshape(-1)
    if m.size == 0:
        return 0.0
    low = ~(m >= threshold)  # NaN -> low
    return float(low.mean())


def is_low(mass: Sequence[float] | np.ndarray, threshold: float = COVERED_MASS_THRESHOLD) -> bool:
    """True when more than :data:`LOW_SHARE` of the rows are below ``threshold``."""
    return low_mass_share(mass, threshold) > LOW_SHARE


def _top_tokens(backend: Any, row: int, k: int, tops: Sequence[Sequence[tuple[str, float]]] | None = None) -> str:
    if tops is not None:
        pairs = list(tops[row])[:k] if 0 <= row < len(tops) else []
        return ", ".join(f"{tok!r} {float(np.exp(lp)):.3g}" for tok, lp in pairs) if pairs else "(not recorded)"
    top = getattr(backend, "last_level_top", None)
    if top is None:
        return f"(the {getattr(backend, 'name', 'this')} backend cannot list them)"
    try:
        pairs = top(row, k)
    except Exception as err:  # the warning must never sink the scores it warns about
        log.debug("last_level_top failed: %s", err)
        return f"(could not be read: {type(err).__name__})"
    if not pairs:
        return "(not recorded)"
    return ", ".join(f"{tok!r} {float(np.exp(lp)):.3g}" for tok, lp in pairs)


def check_covered_mass(
    mass: Sequence[float] | np.ndarray,
    *,
    backend: Any,
    prompts: Sequence[Any],
    candidates: Sequence[str],
    what: str = "",
    threshold: float = COVERED_MASS_THRESHOLD,
    tops: Sequence[Sequence[tuple[str, float]]] | None = None,
) -> str | None:
    """Warn once per run when most of a batch has a covered mass below ``threshold``.

    Args:
        mass: covered mass per prompt (:func:`lmmiqa.levels.covered_mass`).
        backend: the backend that scored the prompts just now, in this thread (its ``last_level_top(row, k)``, kept
            from that same forward, lists the model's likely next tokens; no second forward).
        prompts: the prompts, in the order of ``mass``.
        candidates: the level candidates as passed to the backend.
        what: the method name, for the message.
        threshold: the covered mass below which an item counts as low.
        tops: the model's most likely next tokens per prompt (text, log-probability), for callers that read the
            log-probabilities outside ``backend.level_logprobs`` (default: ``backend.last_level_top``).

    Returns:
        The warning text when it warned, else None (not low, or already warned this run for this model and
        candidate set).
    """
    m = np.asarray(mass, dtype=np.float64).reshape(-1)
    if not len(prompts) or not is_low(m, threshold):
        return None
    model = str(getattr(backend, "model_id", "") or "?")
    key = (model, tuple(candidates))
    with _LOCK:
        if key in _WARNED:
            return None
        _WARNED.add(key)
    finite = np.where(np.isfinite(m), m, -1.0)
    worst = int(np.argmin(finite))
    top_text = _top_tokens(backend, worst, TOP_K, tops)
    median = float(np.nanmedian(m)) if np.isfinite(m).any() else float("nan")
    msg = (
        f"{what + ': ' if what else ''}the level tokens {list(candidates)} hold only {median:.3g} of the model's "
        f"next-token probability (median covered mass over {m.size} prompt(s); {low_mass_share(m, threshold):.0%} "
        f"below {threshold}) on {model}. The prompt, chat template or model probably does not fit (a thinking "
        "template, a model that answers in words, a wrong answer prefix, random weights), and the scores are a "
        f"softmax over tokens the model did not mean to write. Its most likely next tokens: {top_text}. "
        "(Warned once per run; see details.covered_mass.)"
    )
    warnings.warn(msg, LowCoveredMassWarning, stacklevel=3)
    return msg


# ------------------------------------------------------------------------------------- missing levels


def missing_level_details(
    logprobs: np.ndarray,
    floors: Sequence[tuple[float, int] | None],
    *,
    keys: Sequence[str],
    values: Sequence[float] | None = None,
) -> list[dict[str, Any] | None]:
    """Per row: None when every level was seen, else ``{"levels", "top_logprobs", "logprob_at_most",
    "probability_at_most", "score_error_at_most"}`` (the last only with ``values``).

    Args:
        logprobs: [B, C] level log-probabilities, ``-inf`` where a level was not listed.
        floors: per row, None or ``(floor, k)`` from the backend (``last_level_floors()``): the server listed its
            top ``k`` and each missing level is at most ``exp(floor)`` likely.
        keys: the result key of each level (``"1"``..``"K"``).
        values: the level values, for the score-error bound.
    """
    from lmmiqa.levels import missing_level_bounds

    lp = np.atleast_2d(np.asarray(logprobs, dtype=np.float64))
    out: list[dict[str, Any] | None] = []
    for i, row in enumerate(lp):
        info = floors[i] if i < len(floors) else None
        missing = ~np.isfinite(row)
        if info is None or not missing.any():
            out.append(None)
            continue
        floor, k = info
        vals = values if values is not None else np.arange(len(row), dtype=np.float64)
        err, prob = missing_level_bounds(row, vals, floor)
        d: dict[str, Any] = {
            "levels": [str(keys[j]) for j in np.flatnonzero(missing)],
            "top_logprobs": int(k),
            "logprob_at_most": float(floor),
            "probability_at_most": float(prob),
        }
        if values is not None:
            d["score_error_at_most"] = float(err)
        out.append(d)
    return out


def check_missing_levels(
    details: Sequence[dict[str, Any] | None], *, backend: Any, candidates: Sequence[str], what: str = ""
) -> str | None:
    """Warn once per run (per model and candidate set) when a server's listing left out levels that could matter
    (a closed-set probability above :data:`MISSING_WARN_PROBABILITY`) in any row."""
    rows = [d for d in details if d and d["probability_at_most"] > MISSING_WARN_PROBABILITY]
    if not rows:
        return None
    model = str(getattr(backend, "model_id", "") or "?")
    key = (model, tuple(candidates))
    with _LOCK:
        if key in _WARNED_MISSING:
            return None
        _WARNED_MISSING.add(key)
    worst = max(rows, key=lambda d: d.get("score_error_at_most", d["probability_at_most"]))
    bound = (f"the score by at most {worst['score_error_at_most']:.3g}" if "score_error_at_most" in worst
             else f"a level's probability by at most {worst['probability_at_most']:.3g}")
    msg = (
        f"{what + ': ' if what else ''}{len(rows)} of {len(details)} item(s) had levels that matter outside the server's top "
        f"{worst['top_logprobs']} ({model}): e.g. levels {worst['levels']}, each at most "
        f"{float(np.exp(worst['logprob_at_most'])):.3g} likely, which can change {bound}. They are left out of the "
        "read-out and listed in details.missing_levels. Let the server list more (vLLM: --max-logprobs 1000; the "
        "backend asks for up to max_top_logprobs). (Warned once per run.)"
    )
    warnings.warn(msg, MissingLevelsWarning, stacklevel=3)
    return msg


def check_levels(
    logprobs: np.ndarray,
    *,
    backend: Any,
    prompts: Sequence[Any],
    candidates: Sequence[str],
    what: str = "",
    keys: Sequence[str] | None = None,
    values: Sequence[float] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any] | None]]:
    """Both checks for level log-probabilities just read from ``backend`` in this thread: the covered-mass warning
    and the missing-levels report and warning.

    Returns:
        ``(covered mass [B], missing-level details per row)``.
    """
    from lmmiqa.levels import covered_mass

    lp = np.atleast_2d(np.asarray(logprobs, dtype=np.float64))
    mass = covered_mass(lp)
    check_covered_mass(mass, backend=backend, prompts=prompts, candidates=candidates, what=what)
    floors_fn = getattr(backend, "last_level_floors", None)
    floors = floors_fn() if floors_fn is not None else []
    missing = missing_level_details(
        lp, floors, keys=list(keys) if keys is not None else list(candidates), values=values
    )
    check_missing_levels(missing, backend=backend, candidates=candidates, what=what)
    return mass, missing
