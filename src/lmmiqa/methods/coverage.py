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


class LowCoveredMassWarning(LmmiqaWarning):
    """The level tokens hold little of the model's next-token probability: prompt, template or model do not fit."""


_WARNED: set[tuple[str, tuple[str, ...]]] = set()
_LOCK = threading.Lock()


def reset_low_mass_warnings() -> None:
    """Forget which (model, candidates) pairs were warned about, so that the next low batch warns again."""
    with _LOCK:
        _WARNED.clear()


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


def _top_tokens(backend: Any, row: int, k: int) -> str:
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
    tops = _top_tokens(backend, worst, TOP_K)
    median = float(np.nanmedian(m)) if np.isfinite(m).any() else float("nan")
    msg = (
        f"{what + ': ' if what else ''}the level tokens {list(candidates)} hold only {median:.3g} of the model's "
        f"next-token probability (median covered mass over {m.size} prompt(s); {low_mass_share(m, threshold):.0%} "
        f"below {threshold}) on {model}. The prompt, chat template or model probably does not fit (a thinking "
        "template, a model that answers in words, a wrong answer prefix, random weights), and the scores are a "
        f"softmax over tokens the model did not mean to write. Its most likely next tokens: {tops}. "
        "(Warned once per run; see details.covered_mass.)"
    )
    warnings.warn(msg, LowCoveredMassWarning, stacklevel=3)
    return msg
