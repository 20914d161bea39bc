"""Checks that a quality-aware model's answers mean what each method claims (issue 22 §3).

Pure helpers for the semantic checks of ``benchmarks/bench_quality_model.py``: a held-out split by reference
image, correlation with distortion severity, the half-degraded image of the LLM-IQA check (Li et al. 2025's
global + region scores, METHODS.md §1), agreement of an IQARAG bank's anchor words with its MOS bins
(METHODS.md §2.4, Q-Align's five words) and the order consistency of LEAF's pairwise teacher answers.
Correlations reuse :mod:`lmmiqa.evaluation.correlation`; MOS bins reuse :func:`lmmiqa.retrieval.select.mos_bins`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError
from lmmiqa.evaluation.correlation import plcc, srcc

Box = tuple[int, int, int, int]


def reference_split(references: Sequence[str], held_out: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split distinct reference ids into ``(train, held_out)`` lists, deterministically by ``seed``.

    The order is a hash of ``(seed, id)``, so adding a reference does not reshuffle the others. Every distorted
    version of a reference belongs to the same side (no content leaks from training into the held-out set).

    Raises:
        ConfigError: ``held_out`` is not in ``1 .. len(distinct references) - 1``.
    """
    refs = sorted(set(str(r) for r in references))
    n = int(held_out)
    if not 1 <= n < len(refs):
        raise ConfigError(f"held_out must be in 1..{len(refs) - 1} for {len(refs)} references, got {held_out!r}")

    def key(r: str) -> str:
        return hashlib.sha256(f"{int(seed)}:{r}".encode()).hexdigest()

    ordered = sorted(refs, key=key)
    test = sorted(ordered[:n])
    return [r for r in refs if r not in set(test)], test


def severity_correlation(scores: Sequence[float], severities: Sequence[float], *, higher_is_better: bool = True
                         ) -> dict[str, float]:
    """SRCC/PLCC of scores with image quality, quality being ``-severity`` (more distortion = worse).

    A score where higher means better quality gives positive values for a model that sees quality.
    """
    s = np.asarray(scores, dtype=np.float64)
    q = -np.asarray(severities, dtype=np.float64)
    if s.shape != q.shape or s.ndim != 1:
        raise ConfigError(f"scores {s.shape} and severities {q.shape} must be 1-D and of the same length")
    if not higher_is_better:
        s = -s
    return {"srcc": float(srcc(s, q)), "plcc": float(plcc(s, q)), "n": int(s.size)}


@dataclass(frozen=True)
class HalfDegraded:
    """An image whose one half is degraded and the other pristine (the LLM-IQA region check)."""

    image: Any
    degraded_box: Box
    pristine_box: Box
    side: str


def half_degraded(image: Any, degrade: Callable[[np.ndarray], np.ndarray], side: str = "left") -> HalfDegraded:
    """Apply ``degrade`` (an RGB uint8 array -> same shape) to one half of ``image`` only.

    ``side`` is ``left``, ``right``, ``top`` or ``bottom``: the degraded half. The whole image is degraded first
    and then pasted over the chosen half, so distortions that look at neighbours (blur, JPEG blocks) behave in
    the half as they do in a fully degraded image. Boxes are ``(x0, y0, x1, y1)``, end-exclusive.
    """
    from PIL import Image

    sides = ("left", "right", "top", "bottom")
    if side not in sides:
        raise ConfigError(f"side must be one of {', '.join(sides)}, got {side!r}")
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    h, w = arr.shape[:2]
    bad = np.asarray(degrade(arr.copy()), dtype=np.uint8)
    if bad.shape != arr.shape:
        raise ConfigError(f"degrade must keep the shape {arr.shape}, got {bad.shape}")
    out = arr.copy()
    boxes: dict[str, Box] = {
        "left": (0, 0, w // 2, h), "right": (w // 2, 0, w, h),
        "top": (0, 0, w, h // 2), "bottom": (0, h // 2, w, h),
    }
    opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
    x0, y0, x1, y1 = boxes[side]
    out[y0:y1, x0:x1] = bad[y0:y1, x0:x1]
    return HalfDegraded(Image.fromarray(out), boxes[side], boxes[opposite[side]], side)


def half_masks(width: int, height: int, blocks: int = 2, vertical_split: bool = True) -> np.ndarray:
    """Masks of ``2·blocks`` tiles that never straddle the middle line (``bool [2·blocks, H, W]``).

    Each half is cut into ``blocks`` strips along the other axis, so every LLM-IQA region lies entirely in one
    half: the crop/region bookkeeping of the check is then exact, whatever the segmenter would have drawn.
    """
    if int(blocks) < 1:
        raise ConfigError(f"blocks must be >= 1, got {blocks!r}")
    h, w = int(height), int(width)
    out = []
    for half in range(2):
        for b in range(int(blocks)):
            m = np.zeros((h, w), dtype=bool)
            if vertical_split:
                xs = slice(0, w // 2) if half == 0 else slice(w // 2, w)
                y0, y1 = b * h // blocks, (b + 1) * h // blocks
                m[y0:y1, xs] = True
            else:
                ys = slice(0, h // 2) if half == 0 else slice(h // 2, h)
                x0, x1 = b * w // blocks, (b + 1) * w // blocks
                m[ys, x0:x1] = True
            out.append(m)
    return np.stack(out)


def box_overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Fraction of box ``a``'s area that lies inside box ``b`` (0 for an empty ``a``)."""
    ax0, ay0, ax1, ay1 = (int(v) for v in a)
    bx0, by0, bx1, by1 = (int(v) for v in b)
    area = max(0, ax1 - ax0) * max(0, ay1 - ay0)
    if area == 0:
        return 0.0
    iw = max(0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0, min(ay1, by1) - max(ay0, by0))
    return iw * ih / area


def region_halves(regions: Sequence[dict[str, Any]], degraded_box: Sequence[int], pristine_box: Sequence[int],
                  min_overlap: float = 0.9) -> dict[str, list[float]]:
    """Sort LLM-IQA's scored regions (``details["regions"]``: ``crop`` box and ``score``) by half.

    A region counts for a half when at least ``min_overlap`` of its *scored crop* (the box actually cropped, after
    ``min_crop_side`` growth) lies inside it; crops that straddle both halves go to ``mixed``.
    """
    out: dict[str, list[float]] = {"degraded": [], "pristine": [], "mixed": []}
    for r in regions:
        crop = r["crop"]
        if box_overlap(crop, degraded_box) >= min_overlap:
            out["degraded"].append(float(r["score"]))
        elif box_overlap(crop, pristine_box) >= min_overlap:
            out["pristine"].append(float(r["score"]))
        else:
            out["mixed"].append(float(r["score"]))
    return out


def half_check(details: dict[str, Any], final_score: float, degraded_box: Sequence[int],
               pristine_box: Sequence[int]) -> dict[str, Any]:
    """The LLM-IQA half check of one result: degraded crops < pristine crops, the mixed score in between.

    ``passed`` is true when both halves have at least one crop, the mean degraded-crop score is below the mean
    pristine-crop score, and ``final_score`` lies in ``[degraded mean, pristine mean]``.
    """
    halves = region_halves(details["regions"], degraded_box, pristine_box)
    deg = float(np.mean(halves["degraded"])) if halves["degraded"] else float("nan")
    pri = float(np.mean(halves["pristine"])) if halves["pristine"] else float("nan")
    ok = bool(halves["degraded"] and halves["pristine"] and deg < pri and deg <= float(final_score) <= pri)
    return {"degraded": deg, "pristine": pri, "mixed": float(final_score), "global": details.get("global"),
            "straddling": len(halves["mixed"]), "passed": ok}


def bank_word_agreement(mos: Sequence[float], words: Sequence[str], mos_range: tuple[float, float],
                        level_words: Sequence[str] | None = None) -> float:
    """Fraction of bank items whose anchor word is the Q-Align word of their MOS bin (IQARAG, METHODS.md §2.4).

    The MOS is normalized by ``mos_range`` and binned with :func:`lmmiqa.retrieval.select.mos_bins` (five equal
    bins); bin ``b`` should read ``level_words[b-1]`` (default Q-Align's bad .. excellent).
    """
    from lmmiqa.levels import QALIGN_SCALE
    from lmmiqa.retrieval.select import mos_bins

    lo, hi = float(mos_range[0]), float(mos_range[1])
    if not hi > lo:
        raise ConfigError(f"mos_range must be (low, high) with high > low, got {mos_range!r}")
    vocab = list(level_words) if level_words is not None else list(QALIGN_SCALE.words)
    m = np.asarray(mos, dtype=np.float64)
    if m.size != len(words) or m.size == 0:
        raise ConfigError(f"{m.size} MOS values but {len(words)} words (need the same, non-zero count)")
    bins = mos_bins((m - lo) / (hi - lo), len(vocab))
    expected = [vocab[b - 1] for b in bins]
    return float(np.mean([e == w for e, w in zip(expected, words)]))


def pair_order_consistency(points: Sequence[float], pairs: Sequence[tuple[int, int]],
                           p_ab: Sequence[float], p_ba: Sequence[float], margin: float = 0.0) -> dict[str, float]:
    """How often pairwise answers, asked in both orders, agree with the pointwise ranking (LEAF's teacher).

    Both answers estimate P(image ``i`` better than image ``j``) for pair ``(i, j)``, as the LEAF teacher cache
    stores them (:func:`lmmiqa.distill.teacher.judge_pairs_prompt`): ``p_ab`` with ``i`` shown first, ``p_ba``
    with ``j`` shown first. A pair agrees when both orders prefer the image with the higher point score (pairs
    whose point scores differ by ``<= margin`` are skipped); ``order_consistent`` counts pairs whose two orders
    prefer the same image. A pair prompt read the wrong way round gives ``agree`` near 0; a model that always
    picks the first (or second) image gives ``order_consistent`` near 0.
    """
    s = np.asarray(points, dtype=np.float64)
    a = np.asarray(p_ab, dtype=np.float64)
    b = np.asarray(p_ba, dtype=np.float64)
    if not (len(pairs) == a.size == b.size):
        raise ConfigError(f"{len(pairs)} pairs, {a.size} and {b.size} answers: they must match")
    agree = orders = used = 0
    for (i, j), x, y in zip(pairs, a, b):
        d = s[int(i)] - s[int(j)]
        if abs(d) <= margin:
            continue
        used += 1
        first_better = bool(d > 0)
        agree += int((x > 0.5) == first_better and (y > 0.5) == first_better)
        orders += int((x > 0.5) == (y > 0.5))
    if used == 0:
        raise ConfigError("no pair has distinct point scores; nothing to compare")
    return {"agree": agree / used, "order_consistent": orders / used, "pairs": used}
