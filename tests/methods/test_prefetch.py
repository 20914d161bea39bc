"""Scorer.iter_score decodes the next batch in a background thread while the current one is scored."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

import lmmiqa.methods.base as base
from lmmiqa.images import ImageItem
from lmmiqa.methods.base import Scorer, ScorerConfig, prefetched
from lmmiqa.types import ScoreResult


class MeanScorer(Scorer):
    """Scores the mean pixel; batch 0 waits (up to 2 s) for the decode of batch 1 to have started."""

    name = "mean-test"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.batch1_loading = threading.Event()
        self.overlapped: list[bool] = []
        self.calls = 0

    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        if self.calls == 0:
            self.overlapped.append(self.batch1_loading.wait(timeout=2.0))
        self.calls += 1
        return [
            ScoreResult(image=it.key, score=float(np.asarray(it.image).mean()), method=self.name, higher_is_better=True)
            for it in items
        ]


def _run(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, prefetch: bool) -> tuple[list[ScoreResult], MeanScorer]:
    from lmmiqa.testing import make_image

    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        make_image(40 + 8 * i, 30, seed=i).save(p)
        paths.append(str(p))
    paths.insert(3, str(tmp_path / "missing.png"))
    scorer = MeanScorer(ScorerConfig(batch_size=3, prefetch=prefetch))
    real = base.load_many

    def spy(chunk: Any, limits: Any, start: int = 0, workers: int = 0) -> Any:
        if start == 3:
            scorer.batch1_loading.set()
        return real(chunk, limits, start=start, workers=workers)

    monkeypatch.setattr(base, "load_many", spy)
    return scorer.score(paths), scorer


def test_prefetch_overlaps_and_keeps_results_and_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    with_prefetch, s1 = _run(monkeypatch, tmp_path, True)
    without, s2 = _run(monkeypatch, tmp_path, False)
    assert s1.overlapped == [True]  # batch 1 was being decoded while batch 0 was scored
    assert s2.overlapped == [False]  # the old sequential path: it only starts after
    assert [r.image for r in with_prefetch] == [r.image for r in without]
    assert [r.score for r in with_prefetch] == [r.score for r in without]
    assert [r.ok for r in with_prefetch] == [True, True, True, False, True, True, True, True]


def test_prefetched_helper_order_bound_and_errors() -> None:
    started: list[int] = []
    gen = prefetched(range(5), lambda x: started.append(x) or x * 10)
    assert next(gen) == 0
    time.sleep(0.3)
    assert started == [0, 1]  # the next one is computed, never two ahead
    assert list(gen) == [10, 20, 30, 40]
    assert list(prefetched([], lambda x: x)) == []

    def boom(x: int) -> int:
        if x == 2:
            raise ValueError("bad batch")
        return x

    out = []
    with pytest.raises(ValueError, match="bad batch"):
        for v in prefetched(range(4), boom):
            out.append(v)
    assert out == [0, 1]
