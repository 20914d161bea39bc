"""Pure math of LEAF's teacher judgments (METHODS §3.1): reliabilities, pair probabilities, pair sampling.

* Point reliability from the teacher's level distribution: ``1 − H(p)/log K`` (normalized entropy, default) or
  ``max p``; a teacher without a distribution gets reliability 1 (every point counts fully).
* Pair preference from a two-image prompt asked in both orders: the two estimates of P(A better than B) are
  averaged, and their agreement ``1 − |p_ab − p_ba|`` is the pair's reliability (a model that always prefers
  the first image gets ~0.5 with low reliability).
* Pair preference derived from point scores (teachers without a comparison prompt): Thurstone case V,
  ``Φ((s_A − s_B)/(√2·σ))``, or Bradley–Terry, ``sigmoid((s_A − s_B)/σ)``, with σ the standard deviation of
  the teacher's scores over the image set.
* Pair sampling (:func:`sample_pairs`): a documented mix of *informative* pairs (rank neighbours whose scores
  are close but not identical) and uniformly random pairs, each in a random A/B order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lmmiqa.errors import ConfigError, DataError

POINT_RELIABILITIES = ("entropy", "maxprob")
DERIVED_PAIR_MODELS = ("thurstone", "bradley-terry")


def point_reliability(probs: np.ndarray, kind: str = "entropy") -> np.ndarray:
    """Reliability of each point-wise judgment from its level distribution, in [0, 1].

    Args:
        probs: [N, K] probabilities over K ≥ 2 levels (rows need not be exactly normalized; they are).
        kind: ``entropy`` → ``1 − H(p)/log K`` (1 for a one-hot row, 0 for uniform); ``maxprob`` → ``max p``
            (1/K for uniform).

    Returns:
        float64 [N]; NaN for rows that are not finite or sum to zero.
    """
    if kind not in POINT_RELIABILITIES:
        raise ConfigError(f"unknown point reliability {kind!r}; known: {', '.join(POINT_RELIABILITIES)}")
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    k = p.shape[1]
    if k < 2:
        raise ConfigError(f"a level distribution needs at least 2 levels, got {k}")
    total = p.sum(axis=1, keepdims=True)
    ok = np.all(np.isfinite(p), axis=1) & (total[:, 0] > 0) & np.all(p >= 0, axis=1)
    out = np.full(p.shape[0], np.nan)
    q = p[ok] / total[ok]
    if kind == "maxprob":
        out[ok] = q.max(axis=1)
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=1)
    out[ok] = np.clip(1.0 - h / math.log(k), 0.0, 1.0)
    return out


def combine_orders(p_ab: np.ndarray, p_ba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combine the two orders of a comparison prompt.

    Args:
        p_ab: P(A better than B) read from the prompt that shows A first.
        p_ba: P(A better than B) read from the prompt that shows B first (i.e. the probability that the model
            preferred the *second* image there).

    Returns:
        ``(p, reliability)``: the mean of the two estimates and their agreement ``1 − |p_ab − p_ba|``.
    """
    a = np.asarray(p_ab, dtype=np.float64)
    b = np.asarray(p_ba, dtype=np.float64)
    return (a + b) / 2.0, 1.0 - np.abs(a - b)


def derived_pair_probability(
    score_a: np.ndarray, score_b: np.ndarray, sigma: float, model: str = "thurstone"
) -> np.ndarray:
    """P(A better than B) from two higher-is-better point scores and the teacher's score spread ``sigma``.

    ``thurstone``: ``Φ((s_A − s_B)/(√2·σ))`` (case V: each score carries Gaussian noise of std σ);
    ``bradley-terry``: ``sigmoid((s_A − s_B)/σ)``.
    """
    if model not in DERIVED_PAIR_MODELS:
        raise ConfigError(f"unknown pair model {model!r}; known: {', '.join(DERIVED_PAIR_MODELS)}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise DataError(f"the teacher's score spread must be positive and finite to derive pairs, got {sigma}")
    d = (np.asarray(score_a, dtype=np.float64) - np.asarray(score_b, dtype=np.float64)) / sigma
    if model == "thurstone":
        from scipy.special import ndtr

        return ndtr(d / math.sqrt(2.0))
    from scipy.special import expit

    return expit(d)


def sample_pairs(
    scores: Sequence[float] | np.ndarray,
    n_pairs: int,
    *,
    close_fraction: float = 0.5,
    window: int = 8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample image pairs for pair-wise judgments.

    The scheme (deterministic for a seed):

    1. *Informative* pairs: sort the images by teacher score; every pair of images at most ``window`` rank
       positions apart whose scores differ (close but not identical) is a candidate. Draw
       ``round(close_fraction · n_pairs)`` of them uniformly without replacement (all when fewer exist).
    2. *Random* pairs: fill up to ``n_pairs`` with uniformly random distinct unordered pairs not drawn yet
       (they keep the student calibrated across the whole range, not only locally).
    3. Each pair gets a random A/B order (so a teacher's position bias does not align with the score order).

    ``n_pairs`` is capped at ``n·(n − 1)/2``.

    Args:
        scores: teacher point scores (higher is better), one per image; must be finite.
        n_pairs: how many pairs to return.
        close_fraction: share of informative pairs, in [0, 1].
        window: rank distance within which pairs count as close (≥ 1).
        seed: random seed.

    Returns:
        ``(pairs, close)``: int64 [M, 2] image indices (A, B) and bool [M] (true for informative pairs).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise DataError("teacher scores must be finite to sample pairs")
    if not 0.0 <= close_fraction <= 1.0:
        raise ConfigError(f"close_fraction must be in [0, 1], got {close_fraction}")
    if int(window) < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    if int(n_pairs) < 0:
        raise ConfigError(f"the number of pairs must be >= 0, got {n_pairs}")
    n = s.size
    total = n * (n - 1) // 2
    target = min(int(n_pairs), total)
    rng = np.random.default_rng(int(seed))
    if target == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=bool)

    order = np.argsort(s, kind="stable")
    cand: list[np.ndarray] = []
    for d in range(1, min(int(window), n - 1) + 1):
        a, b = order[:-d], order[d:]
        keep = s[a] != s[b]
        cand.append(np.stack([a[keep], b[keep]], axis=1))
    close_c = np.concatenate(cand, axis=0) if cand else np.zeros((0, 2), dtype=np.int64)
    n_close = min(round(close_fraction * target), len(close_c))
    chosen = close_c[rng.choice(len(close_c), size=n_close, replace=False)] if n_close else close_c[:0]
    lo = np.minimum(chosen[:, 0], chosen[:, 1])
    hi = np.maximum(chosen[:, 0], chosen[:, 1])
    seen = set(zip(lo.tolist(), hi.tolist()))
    pairs = [(int(x), int(y)) for x, y in zip(lo, hi)]
    is_close = [True] * len(pairs)

    need = target - len(pairs)
    if need > 0:
        if need > (total - len(seen)) // 2:
            # dense request: enumerate every remaining pair and draw among them
            iu, ju = np.triu_indices(n, k=1)
            rest = [(int(x), int(y)) for x, y in zip(iu, ju) if (int(x), int(y)) not in seen]
            pick = rng.choice(len(rest), size=need, replace=False)
            extra = [rest[i] for i in sorted(pick)]
            extra = [extra[i] for i in rng.permutation(len(extra))]
        else:
            extra = []
            while len(extra) < need:
                draw = rng.integers(0, n, size=(2 * (need - len(extra)) + 8, 2))
                for x, y in draw.tolist():
                    if x == y:
                        continue
                    key = (min(x, y), max(x, y))
                    if key in seen:
                        continue
                    seen.add(key)
                    extra.append(key)
                    if len(extra) == need:
                        break
        pairs.extend(extra)
        is_close.extend([False] * len(extra))

    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    flip = rng.random(len(arr)) < 0.5
    arr[flip] = arr[flip][:, ::-1]
    return arr, np.asarray(is_close, dtype=bool)
