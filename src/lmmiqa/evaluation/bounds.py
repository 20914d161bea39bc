"""``levels-bound``: the best agreement any K-level integer scorer can reach on a dataset (LLM-IQA, Table 1).

The MOS itself is quantized with the paper's formula ŝ = Round(K·(s − min)/(max − min)) and correlated with the
unquantized MOS. Note that this gives **K + 1** integer values 0..K, not K; it is the paper's formula and it is kept
as such (the output says so). ``Round`` rounds halves away from zero (as MATLAB's ``round``; all values here are
non-negative, so this is ⌊x + 1/2⌋), not to even.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmmiqa.errors import ConfigError, DataError
from lmmiqa.evaluation.correlation import plcc, srcc

FORMULA = "s_hat = Round(K * (s - min) / (max - min)), rounding halves away from zero"
NOTE = ("the paper's formula (LLM-IQA / Dog-IQA, Table 1): it yields K+1 integer values 0..K, not K; kept "
        "as published so that the paper's table is reproduced")


def quantize_mos(mos: Any, k: int) -> np.ndarray:
    """Quantize scores to integers 0..K with the paper's formula (see the module doc).

    Raises:
        ConfigError: ``k`` < 1. DataError: fewer than two finite scores or all scores equal.
    """
    if int(k) < 1:
        raise ConfigError(f"number of levels must be >= 1, got {k}")
    s = np.asarray(mos, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if s.size < 2:
        raise DataError(f"need at least 2 finite scores to quantize, got {s.size}")
    lo, hi = float(s.min()), float(s.max())
    if hi == lo:
        raise DataError("all scores are equal; nothing to quantize")
    return np.floor(int(k) * (s - lo) / (hi - lo) + 0.5)


def levels_bound(mos: Any, levels: Sequence[int] = (3, 5, 7, 9)) -> list[dict[str, float]]:
    """For each K: SRCC, PLCC and their mean between the K-quantized MOS and the MOS itself.

    Returns:
        ``[{"k": K, "srcc": …, "plcc": …, "mean": …}, …]`` in the order of ``levels``. Non-finite scores are
        ignored.
    """
    s = np.asarray(mos, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    out = []
    for k in levels:
        q = quantize_mos(s, int(k))
        r_s, r_p = srcc(q, s), plcc(q, s)
        out.append({"k": int(k), "srcc": r_s, "plcc": r_p, "mean": (r_s + r_p) / 2.0})
    return out
