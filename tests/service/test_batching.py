"""The micro-batcher on its own (no HTTP, no model): batch formation, groups, limits, failures, shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from lmmiqa.errors import ConfigError
from lmmiqa.images import ImageItem
from lmmiqa.service.batching import BatcherConfig, MicroBatcher, QueueFullError, ServiceClosedError
from lmmiqa.types import ScoreResult


class Recorder:
    """A batch runner that records (group, keys) of every batch; optionally blocks or fails."""

    def __init__(self) -> None:
        self.batches: list[tuple[object, list[str]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = 0
        self.started = threading.Event()

    def __call__(self, group: object, items: list[ImageItem]) -> list[ScoreResult]:
        self.started.set()
        self.gate.wait(10)
        self.batches.append((group, [it.key for it in items]))
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("backend exploded")
        return [ScoreResult(image=it.key, score=float(len(it.key)), method=str(group)) for it in items]


def items(prefix: str, n: int) -> list[ImageItem]:
    return [ImageItem(key=f"{prefix}{i}", image=object()) for i in range(n)]


def test_one_submission_is_split_into_full_batches_in_order():
    rec = Recorder()
    b = MicroBatcher(rec, BatcherConfig(max_batch=4, max_wait_s=0.05, max_queue=64))
    t = b.submit("g", items("x", 10))
    assert t.wait(10)
    b.close()
    assert [len(keys) for _, keys in rec.batches] == [4, 4, 2]
    assert [r.image for r in t.results] == [f"x{i}" for i in range(10)]
    assert all(r.timings["queue"] >= 0 for r in t.results)


def test_concurrent_requests_share_batches():
    rec = Recorder()
    rec.gate.clear()  # hold the worker so that requests pile up
    b = MicroBatcher(rec, BatcherConfig(max_batch=8, max_wait_s=0.5, max_queue=64))
    first = b.submit("g", items("first", 1))
    assert rec.started.wait(5)  # the worker is busy with the first request
    tickets = []
    threads = [threading.Thread(target=lambda i=i: tickets.append(b.submit("g", items(f"r{i}-", 1)))) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rec.gate.set()
    assert first.wait(10)
    assert all(t.wait(10) for t in tickets)
    b.close()
    # the six single-image requests that arrived while the worker was busy ran as one batch
    assert [len(keys) for _, keys in rec.batches] == [1, 6]


def test_groups_never_share_a_batch():
    rec = Recorder()
    rec.gate.clear()
    b = MicroBatcher(rec, BatcherConfig(max_batch=16, max_wait_s=0.2, max_queue=64))
    ta = b.submit("a", items("a", 3))
    tb = b.submit("b", items("b", 2))
    tc = b.submit("a", items("c", 2))
    rec.gate.set()
    for t in (ta, tb, tc):
        assert t.wait(10)
    b.close()
    for group, keys in rec.batches:
        assert {k[0] for k in keys} <= ({"a", "c"} if group == "a" else {"b"})
    assert sorted(len(k) for _, k in rec.batches) == [2, 5]


def test_single_request_waits_at_most_about_max_wait():
    rec = Recorder()
    b = MicroBatcher(rec, BatcherConfig(max_batch=64, max_wait_s=0.02, max_queue=64))
    t = b.submit("g", items("x", 1))
    assert t.wait(10)  # no timing assertion (shared machines); it must not wait for 64 items
    b.close()
    assert rec.batches == [("g", ["x0"])]


def test_queue_full_is_refused_and_nothing_is_queued():
    rec = Recorder()
    rec.gate.clear()
    b = MicroBatcher(rec, BatcherConfig(max_batch=2, max_wait_s=0.0, max_queue=4))
    running = b.submit("g", items("run", 2))
    assert rec.started.wait(5)
    queued = b.submit("g", items("q", 3))
    with pytest.raises(QueueFullError, match="queue is full"):
        b.submit("g", items("over", 2))
    assert b.depth == 3
    rec.gate.set()
    assert running.wait(10) and queued.wait(10)
    b.close()


def test_a_failing_batch_fails_only_its_own_tickets():
    rec = Recorder()
    rec.fail_next = 1
    b = MicroBatcher(rec, BatcherConfig(max_batch=4, max_wait_s=0.0, max_queue=64))
    bad = b.submit("g", items("bad", 2))
    assert bad.wait(10)
    good = b.submit("g", items("good", 2))
    assert good.wait(10)
    b.close()
    assert isinstance(bad.error, RuntimeError)
    assert good.error is None and [r.image for r in good.results] == ["good0", "good1"]


def test_cancelled_tickets_are_not_scored():
    rec = Recorder()
    rec.gate.clear()
    b = MicroBatcher(rec, BatcherConfig(max_batch=4, max_wait_s=0.0, max_queue=64))
    b.submit("g", items("run", 1))
    assert rec.started.wait(5)
    gone = b.submit("g", items("gone", 2))
    gone.cancel()
    kept = b.submit("g", items("kept", 1))
    rec.gate.set()
    assert kept.wait(10)
    b.close()
    scored = [k for _, keys in rec.batches for k in keys]
    assert "gone0" not in scored and "kept0" in scored


def test_close_finishes_pending_work_then_refuses():
    rec = Recorder()
    b = MicroBatcher(rec, BatcherConfig(max_batch=2, max_wait_s=5.0, max_queue=64))
    t = b.submit("g", items("x", 1))  # would wait 5 s for a second item; close flushes it
    t0 = time.monotonic()
    b.close()
    assert t.done and t.error is None
    assert time.monotonic() - t0 < 5.0
    with pytest.raises(ServiceClosedError):
        b.submit("g", items("late", 1))


def test_callback_runs_once_per_ticket():
    rec = Recorder()
    calls = []
    b = MicroBatcher(rec, BatcherConfig(max_batch=2, max_wait_s=0.0, max_queue=64))
    t = b.submit("g", items("x", 5), on_done=calls.append)
    assert t.wait(10)
    b.close()
    assert calls == [t]


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_wait_s": -1}, {"max_queue": 0}])
def test_invalid_config(kwargs):
    with pytest.raises(ConfigError):
        BatcherConfig(**kwargs)
