"""Level scales as named data, and the pure math that turns level log-probabilities into a score.

Implements the common read-out of METHODS §0 (Q-Align, Wu et al. 2023; Dog-IQA/LLM-IQA, Liu et al. 2024):
softmax over a closed set of single-token levels, expected value Σ p·v, its standard deviation and argmax.
Scales are ordered from the lowest value to the highest; ``probabilities`` in results follow that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError, TokenizationError


@dataclass(frozen=True)
class LevelScale:
    """A closed set of levels.

    Attributes:
        name: identifier, e.g. ``"qalign5"``, ``"standard7"``, ``"letters5"``.
        tokens: the text each level is produced as (without a leading space), lowest value first.
        values: the numeric value of each level, ascending.
        words: a human word for each level (same order).
    """

    name: str
    tokens: tuple[str, ...]
    values: tuple[float, ...]
    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.tokens) == len(self.values) == len(self.words)) or len(self.tokens) < 2:
            raise ConfigError(f"level scale {self.name!r}: tokens, values and words must have the same length >= 2")
        if list(self.values) != sorted(self.values) or len(set(self.values)) != len(self.values):
            raise ConfigError(f"level scale {self.name!r}: values must be strictly increasing")

    @property
    def k(self) -> int:
        return len(self.tokens)

    @property
    def low(self) -> float:
        return float(self.values[0])

    @property
    def high(self) -> float:
        return float(self.values[-1])

    @property
    def keys(self) -> list[str]:
        """Result keys of the levels: the numeric value as a string ("1".."K")."""
        return [_fmt_value(v) for v in self.values]

    def candidates(self, context: str) -> list[str]:
        """Candidate strings as produced right after ``context``.

        ``context`` is the text the model reads just before the level: the end of the rendered generation prompt
        plus the answer prefix where the backend renders the chat template itself (transformers), or the answer
        prefix alone where it cannot see the template (an OpenAI-compatible server). After a context that does
        not end in whitespace, the levels carry a leading space (BPE: ``" good"`` after ``"... is"``, ``" 7"``
        after ``"Assistant:"``); after an empty context or one ending in a space or newline (ChatML's
        ``"<|im_start|>assistant\\n"``) they don't. See :func:`candidates_in_context`.
        """
        return candidates_in_context(self.tokens, context)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tokens": list(self.tokens), "values": list(self.values), "words": list(self.words)}


def leading_space(context: str) -> str:
    """``" "`` when a word produced right after ``context`` carries a leading space, else ``""``: the context is
    non-empty and does not end in whitespace (the BPE convention of every supported tokenizer)."""
    return " " if context and not context[-1].isspace() else ""


def candidates_in_context(candidates: Sequence[str], context: str) -> list[str]:
    """Re-form level candidates for the text the model actually reads before them.

    Each candidate loses one leading space if it has one and gets it back iff :func:`leading_space` says so
    for ``context``. Candidates formed after an answer prefix (``LevelScale.candidates(prefix)``) are thereby
    re-formed for the full context (rendered generation prompt + prefix); with a non-empty prefix nothing
    changes (its last character is the context's last character), with no prefix the end of the chat template
    decides (``"7"`` after ChatML's ``"assistant\\n"``, ``" 7"`` after ``"Assistant:"``).
    """
    lead = leading_space(context)
    return [lead + (c[1:] if c.startswith(" ") else c) for c in candidates]


def _fmt_value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


#: Q-Align's five words (also IQARAG and the LEAF teacher): bad=1 ... excellent=5
QALIGN_SCALE = LevelScale(
    name="qalign5",
    tokens=("bad", "poor", "fair", "good", "excellent"),
    values=(1.0, 2.0, 3.0, 4.0, 5.0),
    words=("bad", "poor", "fair", "good", "excellent"),
)

#: AgenticIQA summarizer letters: E. Bad=1 ... A. Excellent=5
LETTER_SCALE = LevelScale(
    name="letters5",
    tokens=("E", "D", "C", "B", "A"),
    values=(1.0, 2.0, 3.0, 4.0, 5.0),
    words=("Bad", "Poor", "Fair", "Good", "Excellent"),
)

#: LLM-IQA standards per K, lowest level first. K = 7 is the paper's; 3, 5, 9 are lmmiqa decisions (METHODS §1).
STANDARD_WORDS: dict[int, tuple[str, ...]] = {
    3: ("Bad", "Fair", "Good"),
    5: ("Bad", "Poor", "Fair", "Good", "Excellent"),
    7: ("Very Bad", "Poor", "Bad", "Fair", "Good", "Excellent", "Perfect"),
    9: ("Very Bad", "Bad", "Poor", "Mediocre", "Fair", "Good", "Very Good", "Excellent", "Perfect"),
}

SUPPORTED_K = tuple(sorted(STANDARD_WORDS))


def standard_scale(k: int) -> LevelScale:
    """The standard-guided digit scale ``1..K`` with a word per level (K ∈ {3, 5, 7, 9})."""
    try:
        k = int(k)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"levels must be an integer in {list(SUPPORTED_K)}, got {k!r}") from err
    if k not in STANDARD_WORDS:
        raise ConfigError(f"unsupported number of levels {k}; supported: {', '.join(map(str, SUPPORTED_K))}")
    return LevelScale(
        name=f"standard{k}",
        tokens=tuple(str(i) for i in range(1, k + 1)),
        values=tuple(float(i) for i in range(1, k + 1)),
        words=STANDARD_WORDS[k],
    )


# --------------------------------------------------------------------------- pure math


def closed_set_probs(logprobs: np.ndarray) -> np.ndarray:
    """Softmax over the candidates only. ``-inf`` entries get probability 0; rows of all ``-inf`` become NaN.

    Args:
        logprobs: [B, C] (or [C]) log-probabilities (any additive constant per row is irrelevant).
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    squeeze = lp.ndim == 1
    lp = np.atleast_2d(lp)
    out = np.full_like(lp, np.nan)
    finite = np.isfinite(lp)
    ok = finite.any(axis=1)
    if ok.any():
        rows = lp[ok]
        m = np.max(np.where(np.isfinite(rows), rows, -np.inf), axis=1, keepdims=True)
        e = np.where(np.isfinite(rows), np.exp(rows - m), 0.0)
        out[ok] = e / e.sum(axis=1, keepdims=True)
    return out[0] if squeeze else out


def covered_mass(logprobs: np.ndarray) -> np.ndarray:
    """Total full-vocabulary probability of the candidates, per row (how much of the answer they explain)."""
    lp = np.atleast_2d(np.asarray(logprobs, dtype=np.float64))
    return np.where(np.isfinite(lp), np.exp(np.minimum(lp, 0.0)), 0.0).sum(axis=1)


def missing_level_bounds(logprobs: np.ndarray, values: Sequence[float], floor: float) -> tuple[float, float]:
    """How much levels missing from a server's top-k listing can change the read-out, at most.

    A server lists its ``k`` most likely next tokens; a level it leaves out has a log-probability of at most
    ``floor`` (the last one listed). With the listed levels' full-vocabulary probabilities ``p_i`` (sum ``S``)
    and each missing one in ``[0, a]`` (``a = exp(floor)``), the expected score ``Σ q·v`` over the closed set
    moves furthest when the missing levels on one side of the listed expectation ``E`` take the value ``a``:
    ``max over n of a·Σ_{n largest d_j} d_j / (S + n·a)`` with ``d_j = v_j − E`` (and ``E − v_j`` downwards) —
    a linear-fractional function of each ``p_j``, so the optimum sits at a vertex of the box.

    Args:
        logprobs: [C] full-vocabulary log-probabilities of the levels, ``-inf`` for the missing ones.
        values: the level values (C).
        floor: log-probability that every missing level is at most.

    Returns:
        ``(score_error, probability)``: the largest change of the expected score, and the largest closed-set
        probability any one missing level can have (``a / (S + a)``). ``(0, 0)`` when nothing is missing;
        ``(high − low, 1)`` when no level was listed (the score is then unknown).
    """
    lp = np.asarray(logprobs, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if lp.shape != v.shape:
        raise ConfigError(f"{lp.size} log-probabilities for {v.size} level values")
    seen = np.isfinite(lp)
    if seen.all():
        return 0.0, 0.0
    if not seen.any():
        return float(v.max() - v.min()), 1.0
    a = float(np.exp(min(float(floor), 0.0)))
    p = np.exp(lp[seen])
    big_s = float(p.sum())
    e = float(p @ v[seen]) / big_s
    best = 0.0
    for d in (v[~seen] - e, e - v[~seen]):
        d = np.sort(d[d > 0])[::-1]
        for n in range(1, d.size + 1):
            best = max(best, a * float(d[:n].sum()) / (big_s + n * a))
    return best, a / (big_s + a)


def expected_score(probs: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """Σ p·v per row."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    return p @ np.asarray(values, dtype=np.float64)


def score_std(probs: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """Standard deviation of the level value under the distribution, per row: sqrt(Σ p·(v − E)²)."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    v = np.asarray(values, dtype=np.float64)
    mean = p @ v
    var = (p * (v[None, :] - mean[:, None]) ** 2).sum(axis=1)
    return np.sqrt(np.maximum(var, 0.0))


def argmax_level(probs: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """The value of the most probable level per row (ties: the lower level, deterministically)."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    idx = np.argmax(np.nan_to_num(p, nan=-1.0), axis=1)
    return np.asarray(values, dtype=np.float64)[idx]


READOUTS = ("expected", "argmax")


def readout(probs: np.ndarray, values: Sequence[float], mode: str = "expected") -> np.ndarray:
    """``expected`` (Σ p·v, default) or ``argmax`` (the paper's one-token answer) per row."""
    if mode == "expected":
        return expected_score(probs, values)
    if mode == "argmax":
        return argmax_level(probs, values)
    raise ConfigError(f"unknown readout {mode!r}; known: {', '.join(READOUTS)}")


def level_details(probs_row: np.ndarray, scale: LevelScale) -> tuple[dict[str, float], dict[str, Any]]:
    """``probabilities`` (value-string -> p, level order) and the standard ``details`` for one item."""
    p = np.asarray(probs_row, dtype=np.float64)
    probabilities = {k: float(x) for k, x in zip(scale.keys, p)}
    details = {
        "level_words": dict(zip(scale.keys, scale.words)),
        "argmax": float(argmax_level(p[None], scale.values)[0]),
        "std": float(score_std(p[None], scale.values)[0]),
        "expected": float(expected_score(p[None], scale.values)[0]),
    }
    return probabilities, details


# --------------------------------------------------------------------------- tokenization


def resolve_token_ids(tokenizer: Any, candidates: Sequence[str], context: str = "") -> list[int]:
    """Token id of each candidate as produced right after ``context``; fail loudly if not exactly one token.

    The id is taken from encoding ``context + candidate`` and checking that it extends the encoding of
    ``context`` by exactly one token (so merges across the boundary are detected). ``context`` should be what
    the model reads before the level: the end of the rendered chat template plus the answer prefix (the
    transformers backend passes it, see ``TransformersBackend.level_token_ids``), not the prefix alone.

    Raises:
        TokenizationError: listing the pieces a candidate splits into.
    """
    ids: list[int] = []
    ctx_ids = tokenizer.encode(context, add_special_tokens=False) if context else []
    problems: list[str] = []
    for cand in candidates:
        if context:
            full = tokenizer.encode(context + cand, add_special_tokens=False)
            if full[: len(ctx_ids)] == ctx_ids and len(full) == len(ctx_ids) + 1:
                ids.append(int(full[-1]))
                continue
            pieces = tokenizer.convert_ids_to_tokens(full[len(ctx_ids) :]) if full[: len(ctx_ids)] == ctx_ids else None
        else:
            full = tokenizer.encode(cand, add_special_tokens=False)
            if len(full) == 1:
                ids.append(int(full[0]))
                continue
            pieces = tokenizer.convert_ids_to_tokens(full)
        if pieces is None:
            common = 0
            while common < min(len(full), len(ctx_ids)) and full[common] == ctx_ids[common]:
                common += 1
            problems.append(
                f"{cand!r} merges with the end of the context {context[-20:]!r}: the context ends in "
                f"{tokenizer.convert_ids_to_tokens(ctx_ids[common:])}, context + candidate in "
                f"{tokenizer.convert_ids_to_tokens(full[common:])}"
            )
        else:
            problems.append(f"{cand!r} -> {len(pieces)} tokens {pieces}")
    if problems:
        raise TokenizationError(
            "level candidates must each be exactly one token of the model's vocabulary in context "
            f"(after {context[-40:]!r}): " + "; ".join(problems)
        )
    if len(set(ids)) != len(ids):
        raise TokenizationError(f"level candidates {list(candidates)} map to duplicate token ids {ids}")
    return ids
