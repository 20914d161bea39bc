"""Reference selection of IQARAG (METHODS §2.3) as pure functions.

IQARAG (retrieval-augmented, training-free IQA) retrieves, for a query image, the ``top_k`` nearest bank items
by L2 distance between image embeddings, splits the normalized MOS range ``[0, 1]`` into five equal bins and
keeps, for each bin, the nearest hit that falls in it: at most five references, one per bin; bins without a hit
are skipped. The query itself is never its own reference (the caller marks such hits in ``exclude``).

Decisions (lmmiqa, documented here and in the scorer):

* Bins are left-closed ``[i/5, (i+1)/5)`` and the last one is closed ``[0.8, 1.0]``; they are numbered
  ``1..5`` (1 = the lowest fifth, level word "bad"; 5 = the highest fifth, "excellent"), which is also the
  Q-Align level value of the word the prompt gives the reference.
* Excluded hits (the query itself) do not use up one of the ``top_k`` places: the nearest ``top_k``
  *other* items are considered.
* Order in the prompt (``order``): ``"quality"`` (default) lists the references from the lowest bin to the
  highest, like a rating scale read upwards, so the order does not depend on distance ties; ``"distance"``
  lists them from the nearest to the farthest.
* Ties in distance are broken by the bank index (lower first), so the selection is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmmiqa.errors import ConfigError

#: number of MOS bins (one reference per bin at most)
N_BINS = 5
#: default number of nearest neighbours considered (the paper does not publish K; METHODS §2.3 decision)
DEFAULT_TOP_K = 50
#: reference orders in the prompt
ORDERS = ("quality", "distance")


@dataclass(frozen=True)
class Selected:
    """One selected reference: its bank row, MOS bin (1..n_bins) and L2 distance to the query."""

    index: int
    bin: int
    distance: float


def normalize_mos(mos: Sequence[float] | np.ndarray, higher_is_better: bool = True) -> tuple[np.ndarray, float, float]:
    """Min–max normalize scores to ``[0, 1]`` with 1 = best.

    Args:
        mos: opinion scores (MOS, or DMOS when ``higher_is_better`` is false).
        higher_is_better: false for DMOS-like scores: they are flipped, so the lowest DMOS maps to 1.

    Returns:
        ``(normalized, min, max)`` with ``min``/``max`` of the raw scores.

    Raises:
        ConfigError: empty input, non-finite values, or every score equal (nothing to bin).
    """
    m = np.asarray(mos, dtype=np.float64)
    if m.ndim != 1 or m.size == 0:
        raise ConfigError("need a non-empty 1-D array of scores to normalize")
    if not np.all(np.isfinite(m)):
        raise ConfigError("scores must be finite to be normalized")
    lo, hi = float(m.min()), float(m.max())
    if hi <= lo:
        raise ConfigError(f"every score equals {lo:g}: min-max normalization (and MOS binning) needs a spread")
    norm = (m - lo) / (hi - lo) if higher_is_better else (hi - m) / (hi - lo)
    return np.clip(norm, 0.0, 1.0), lo, hi


def mos_bins(mos_norm: Sequence[float] | np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """The bin of each normalized score: ``1..n_bins`` for ``[0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1]``.

    Values are clipped to ``[0, 1]`` first. Returns an int64 array of the same length.
    """
    if int(n_bins) < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
    m = np.clip(np.asarray(mos_norm, dtype=np.float64), 0.0, 1.0)
    # tolerate float noise at inner edges (0.6 * 5 = 3.0000000000000004 must be bin 4, as must 0.6 itself)
    idx = np.floor(np.round(m * n_bins, 9)).astype(np.int64)
    return np.minimum(idx, n_bins - 1) + 1


def select_references(
    distances: Sequence[float] | np.ndarray,
    indices: Sequence[int] | np.ndarray,
    bins: Sequence[int] | np.ndarray,
    *,
    top_k: int = DEFAULT_TOP_K,
    n_bins: int = N_BINS,
    exclude: Sequence[bool] | np.ndarray | None = None,
    order: str = "quality",
    max_refs: int | None = None,
) -> list[Selected]:
    """Pick at most one reference per MOS bin among the ``top_k`` nearest hits (IQARAG, METHODS §2.3).

    Args:
        distances: distance of each hit to the query (any order; sorted here).
        indices: the bank row of each hit; ``-1`` marks an empty slot (as faiss returns) and is ignored.
        bins: the MOS bin (``1..n_bins``) of every bank row (indexed by ``indices``).
        top_k: how many nearest non-excluded hits are considered.
        n_bins: number of bins.
        exclude: per hit, true when it must not be used (the query itself: same file, same content).
        order: ``"quality"`` (lowest bin first) or ``"distance"`` (nearest first).
        max_refs: keep at most this many of the per-bin picks, the nearest first (the paper's P; ``None`` or
            ``n_bins``: all of them). Which bins the paper keeps for P < 5 is not published: keeping the nearest
            is lmmiqa's decision.

    Returns:
        The selected references in prompt order; empty when no hit is left.
    """
    if order not in ORDERS:
        raise ConfigError(f"unknown reference order {order!r}; known: {', '.join(ORDERS)}")
    if int(top_k) < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if max_refs is not None and int(max_refs) < 1:
        raise ConfigError(f"max_refs must be >= 1, got {max_refs}")
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    ix = np.asarray(indices, dtype=np.int64).reshape(-1)
    if d.shape != ix.shape:
        raise ConfigError(f"distances and indices differ in length ({d.size} vs {ix.size})")
    b = np.asarray(bins, dtype=np.int64)
    keep = ix >= 0
    if exclude is not None:
        ex = np.asarray(exclude, dtype=bool).reshape(-1)
        if ex.shape != d.shape:
            raise ConfigError(f"exclude has {ex.size} entries for {d.size} hits")
        keep &= ~ex
    keep &= np.isfinite(d)
    d, ix = d[keep], ix[keep]
    ordered = np.lexsort((ix, d))[: int(top_k)]  # by distance, ties by bank row
    chosen: dict[int, Selected] = {}
    for j in ordered:
        row = int(ix[j])
        if row >= b.size:
            raise ConfigError(f"hit {row} is outside the bank ({b.size} rows)")
        k = int(b[row])
        if not 1 <= k <= n_bins:
            raise ConfigError(f"bank row {row} has bin {k}, outside 1..{n_bins}")
        if k not in chosen:
            chosen[k] = Selected(index=row, bin=k, distance=float(d[j]))
            if len(chosen) == n_bins:
                break
    refs = list(chosen.values())
    if max_refs is not None and len(refs) > int(max_refs):
        refs = sorted(refs, key=lambda r: (r.distance, r.index))[: int(max_refs)]
    if order == "quality":
        refs.sort(key=lambda r: r.bin)
    else:
        refs.sort(key=lambda r: (r.distance, r.index))
    return refs


def self_hits(
    distances: Sequence[float] | np.ndarray,
    query_norm: float,
    *,
    same_item: Sequence[bool] | np.ndarray | None = None,
    rel_tol: float = 1e-4,
) -> np.ndarray:
    """Which hits are the query itself: flagged by the caller (same path / content hash) or at distance ≈ 0.

    A hit counts as the query when its distance is at most ``rel_tol · max(‖q‖, 1e-12)``: an identical image
    embedded in another batch differs only by float noise, while distinct images are far apart.
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    hit = d <= float(rel_tol) * max(float(query_norm), 1e-12)
    if same_item is not None:
        hit |= np.asarray(same_item, dtype=bool).reshape(-1)
    return hit
