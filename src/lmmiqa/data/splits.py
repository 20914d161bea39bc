"""Dataset splits as pure functions.

Split specifications (the ``--split`` flag):

* ``None`` or ``all``: every row.
* ``official`` (= ``official:test``), ``official:train``, ``official:val``: the dataset's published split (KonIQ).
* ``seed:N`` (= ``seed:N:test``): the 20 % test part of the seeded 80/20 split number ``N``; ``seed:N:train``
  its 80 % part. The split is drawn over *groups*: images for authentic datasets, reference images for
  synthetic ones (KADID, CSIQ, TID2013, LIVE, synthetic ladders), so that no content is on both sides.

The seeded split is deterministic: groups are sorted, permuted with ``numpy.random.default_rng(N)``, and the
first ``round(0.2 · number of groups)`` (at least one) are the test part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmmiqa.errors import ConfigError, DataError

TEST_FRACTION = 0.2
SPLIT_HELP = "all | train | val | test (= official:...) | official[:train|val|test] | seed:N[:train|test]"


@dataclass(frozen=True)
class SplitSpec:
    """A parsed ``--split`` value.

    Attributes:
        kind: ``all``, ``official`` or ``seed``.
        part: ``train``, ``val`` or ``test`` (``all`` for kind ``all``).
        seed: the split number for kind ``seed``.
    """

    kind: str
    part: str = "all"
    seed: int | None = None

    def __str__(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "official":
            return f"official:{self.part}"
        return f"seed:{self.seed}:{self.part}"


def parse_split(spec: str | None) -> SplitSpec:
    """Parse a split specification; ConfigError lists the accepted forms."""
    if spec is None or str(spec).strip().lower() in ("", "all", "none", "full"):
        return SplitSpec("all")
    text = str(spec).strip().lower()
    if text in ("train", "val", "test"):
        text = f"official:{text}"  # the issue's `--split test` for datasets with an official split
    parts = text.split(":")
    bad = ConfigError(f"invalid split {spec!r}; valid: {SPLIT_HELP}")
    if parts[0] == "official":
        if len(parts) == 1:
            return SplitSpec("official", "test")
        if len(parts) == 2 and parts[1] in ("train", "val", "test"):
            return SplitSpec("official", parts[1])
        raise bad
    if parts[0] == "seed":
        if len(parts) not in (2, 3):
            raise bad
        try:
            seed = int(parts[1])
        except ValueError as err:
            raise bad from err
        if seed < 0:
            raise bad
        part = parts[2] if len(parts) == 3 else "test"
        if part not in ("train", "test"):
            raise bad
        return SplitSpec("seed", part, seed)
    raise bad


def seeded_groups(groups: Sequence[str], seed: int, test_fraction: float = TEST_FRACTION) -> set[str]:
    """The set of groups in the test part of seeded split ``seed``.

    Raises:
        DataError: fewer than two distinct groups (nothing to split).
    """
    uniq = sorted(set(groups))
    if len(uniq) < 2:
        raise DataError(f"cannot split {len(uniq)} group(s) into train and test parts; need at least 2")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(len(uniq))
    n_test = min(len(uniq) - 1, max(1, round(test_fraction * len(uniq))))
    return {uniq[i] for i in order[:n_test]}


def seeded_split_mask(groups: Sequence[str], seed: int, part: str = "test",
                      test_fraction: float = TEST_FRACTION) -> np.ndarray:
    """Boolean mask over items: True for the items in ``part`` (``train`` or ``test``) of seeded split ``seed``."""
    if part not in ("train", "test"):
        raise ConfigError(f"unknown split part {part!r}; valid: train, test")
    test = seeded_groups(groups, seed, test_fraction)
    in_test = np.array([g in test for g in groups], dtype=bool)
    return in_test if part == "test" else ~in_test


def official_split_mask(parts: Sequence[str | None], part: str) -> np.ndarray:
    """Boolean mask over items whose official part equals ``part``; DataError when some item has none."""
    missing = [i for i, p in enumerate(parts) if p is None]
    if missing:
        raise DataError(f"{len(missing)} item(s) have no official split assignment (first row index {missing[0]})")
    return np.array([p == part for p in parts], dtype=bool)
