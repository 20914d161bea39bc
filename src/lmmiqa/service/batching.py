"""Micro-batching: collect decoded images from concurrent requests into backend batches.

A :class:`MicroBatcher` owns one worker thread. Requests :meth:`~MicroBatcher.submit` their already decoded
images (one :class:`~lmmiqa.images.ImageItem` each) under a *group* key: items of one group can share a
backend batch (same method, same options). The worker takes the oldest pending item, then waits until
``max_batch`` items of its group are pending or ``max_wait_s`` has passed since that item arrived, and runs
them as one batch. While the worker is busy, new items accumulate, so under load batches fill up without
waiting (continuous batching); with a single client the added latency is at most ``max_wait_s``.

The number of pending images is bounded (``max_queue``): :meth:`~MicroBatcher.submit` raises
:class:`QueueFullError` instead of letting latency grow without bound. A request that gives up (timeout, its
client left) cancels its :class:`Ticket`; its pending items are dropped before they reach the backend, and a
running batch whose every request gave up is stopped at its next safe point (between two generated tokens,
:mod:`lmmiqa.cancel`). :meth:`~MicroBatcher.abort` (the end of a shutdown's grace period) fails every pending
ticket and stops the running batch the same way.

Nothing here imports FastAPI or torch; the HTTP layer (:mod:`lmmiqa.service.app`) and tests use it directly.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace

from lmmiqa.cancel import cancel_when
from lmmiqa.errors import Cancelled, ConfigError, LmmiqaError
from lmmiqa.images import ImageItem
from lmmiqa.types import ScoreResult

log = logging.getLogger(__name__)

#: runs one batch: (group, items) -> one result per item, in order
BatchRunner = Callable[[Hashable, list[ImageItem]], Sequence[ScoreResult]]


class QueueFullError(LmmiqaError):
    """The batching queue holds too many pending images; the client should retry later (HTTP 429)."""


class ServiceClosedError(LmmiqaError):
    """The batcher is shutting down or stopped and accepts no more work (HTTP 503)."""


class Ticket:
    """The pending results of one request: one slot per submitted item.

    ``on_done`` (if given) is called exactly once, from the worker thread, when every slot is filled or
    the batch that held one of its items failed as a whole (``error`` is then set).
    """

    def __init__(self, n: int, on_done: Callable[[Ticket], None] | None = None) -> None:
        self.results: list[ScoreResult | None] = [None] * n
        self.error: BaseException | None = None
        self.cancelled = False
        #: set when the worker took one of its items into a running batch
        self.started = False
        self._remaining = n
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._on_done = on_done
        if n == 0:
            self._finish()

    @property
    def done(self) -> bool:
        """True once every result is in (or the ticket failed)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done; False on timeout."""
        return self._done.wait(timeout)

    def cancel(self) -> None:
        """Give up on this request: its items still pending are dropped instead of scored."""
        self.cancelled = True

    def _set(self, index: int, result: ScoreResult) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.results[index] = result
            self._remaining -= 1
            finished = self._remaining == 0
        if finished:
            self._finish()

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.error = error
        self._finish()

    def _finish(self) -> None:
        self._done.set()
        if self._on_done is not None:
            try:
                self._on_done(self)
            except Exception:  # a callback must never kill the worker
                log.exception("ticket callback failed")


@dataclass
class _Entry:
    group: Hashable
    item: ImageItem
    ticket: Ticket
    index: int
    enqueued: float


@dataclass(frozen=True)
class BatcherConfig:
    """Micro-batching limits.

    Attributes:
        max_batch: most images in one backend batch.
        max_wait_s: longest time the oldest pending image waits for its batch to fill.
        max_queue: most images pending (not yet in a running batch); more is refused with QueueFullError.
    """

    max_batch: int = 16
    max_wait_s: float = 0.01
    max_queue: int = 256

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_s < 0:
            raise ConfigError(f"max_wait must be >= 0, got {self.max_wait_s}")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue must be >= 1, got {self.max_queue}")


class MicroBatcher:
    """Collects items from concurrent requests and runs them in batches on one worker thread.

    Args:
        run: called on the worker thread with (group, items); returns one result per item. An exception
            fails every ticket that had an item in that batch (other batches are unaffected).
        config: batching limits.
        on_batch: optional observer called after each batch with (size, seconds) (metrics).
        name: the worker thread's name.
    """

    def __init__(
        self,
        run: BatchRunner,
        config: BatcherConfig | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "lmmiqa-batcher",
    ) -> None:
        self.config = config or BatcherConfig()
        self.name = name
        self._run = run
        self._on_batch = on_batch
        self._pending: collections.deque[_Entry] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._aborted: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.batches_run = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._closed:
                raise ServiceClosedError("the batcher was closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting work, finish what is pending, and stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def stop_accepting(self) -> None:
        """Refuse new work (:class:`ServiceClosedError`); what is pending still runs."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self, error: BaseException) -> None:
        """Refuse new work, fail every pending ticket with ``error`` and stop the running batch at its next safe
        point (its tickets fail with :class:`~lmmiqa.errors.Cancelled`)."""
        with self._cond:
            self._closed = True
            self._aborted = error
            pending, self._pending = list(self._pending), collections.deque()
            self._cond.notify_all()
        for e in pending:
            e.ticket._fail(error)

    @property
    def depth(self) -> int:
        """Images pending (not yet in a running batch)."""
        with self._cond:
            return len(self._pending)

    # ------------------------------------------------------------------ submitting
    def submit(
        self, group: Hashable, items: Sequence[ImageItem], on_done: Callable[[Ticket], None] | None = None
    ) -> Ticket:
        """Queue ``items`` (all of one group); returns the :class:`Ticket` that will hold their results.

        Raises:
            QueueFullError: accepting them would exceed ``max_queue`` pending images.
            ServiceClosedError: the batcher is closed.
        """
        self.start()
        now = time.monotonic()
        with self._cond:
            if self._closed:
                raise ServiceClosedError("the server is shutting down")
            if len(self._pending) + len(items) > self.config.max_queue:
                raise QueueFullError(
                    f"the scoring queue is full ({len(self._pending)} images pending, limit "
                    f"{self.config.max_queue}); retry later"
                )
            ticket = Ticket(len(items), on_done)
            for i, item in enumerate(items):
                self._pending.append(_Entry(group, item, ticket, i, now))
            self._cond.notify_all()
        return ticket

    # ------------------------------------------------------------------ worker
    def _take(self) -> list[_Entry] | None:
        """Wait for the next batch (entries of one group, oldest first); None when closed and drained."""
        cfg = self.config
        with self._cond:
            while True:
                while self._pending and self._pending[0].ticket.cancelled:
                    self._pending.popleft()
                if not self._pending:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                first = self._pending[0]
                same = [e for e in self._pending if e.group == first.group and not e.ticket.cancelled]
                remaining = first.enqueued + cfg.max_wait_s - time.monotonic()
                if len(same) >= cfg.max_batch or remaining <= 0 or self._closed:
                    batch = same[: cfg.max_batch]
                    for e in batch:
                        e.ticket.started = True
                    taken = {id(e) for e in batch}
                    self._pending = collections.deque(
                        e for e in self._pending if id(e) not in taken and not e.ticket.cancelled
                    )
                    return batch
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._run_batch(batch)

    def _stop_reason(self, batch: list[_Entry]) -> str | None:
        """Why the running ``batch`` should stop: the batcher aborts, or every request in it gave up."""
        if self._aborted is not None:
            return str(self._aborted)
        if all(e.ticket.cancelled for e in batch):
            return "every request of this batch gave up (timeout or client gone)"
        return None

    def _run_batch(self, batch: list[_Entry]) -> None:
        t0 = time.monotonic()
        items = [e.item for e in batch]
        try:
            with cancel_when(lambda: self._stop_reason(batch)):
                results = list(self._run(batch[0].group, items))
            if len(results) != len(items):
                raise RuntimeError(f"batch runner returned {len(results)} results for {len(items)} items")
        except Cancelled as err:
            log.info("batch of %d item(s) stopped: %s", len(batch), err)
            for e in batch:
                e.ticket._fail(err)
        except Exception as err:
            log.exception("batch of %d item(s) failed", len(batch))
            for e in batch:
                e.ticket._fail(err)
        else:
            for e, r in zip(batch, results):
                e.ticket._set(e.index, replace(r, timings={**r.timings, "queue": t0 - e.enqueued}))
        finally:
            self.batches_run += 1
            if self._on_batch is not None:
                try:
                    self._on_batch(len(batch), time.monotonic() - t0)
                except Exception:
                    log.exception("batch observer failed")
