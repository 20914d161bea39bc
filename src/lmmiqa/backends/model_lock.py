"""The lock of an in-process model shared by scoring forwards and generation (issue 16 §3).

A scoring call is one or a few forwards (tens of milliseconds on a GPU); a ``generate()`` call is a prefill
forward plus one decoding forward per new token (seconds). With a plain lock held for the whole ``generate()``,
a scoring request waits for the whole generation in progress. :class:`ModelLock` lets generation lend the model
between two tokens instead:

* scoring forwards take it with :meth:`ModelLock.priority` and are counted in :attr:`ModelLock.waiting` while
  they wait;
* plain acquirers (``with lock:``, generation) go after every waiting priority acquirer and after a holder that
  lent the lock (another generation does not slip in between two tokens of the one in progress);
* a plain holder calls :meth:`ModelLock.lend` at a safe point (the transformers backend: after each generated
  token, from a ``StoppingCriteria``); when priority acquirers wait, it lets them all run and then takes the lock
  back. The KV cache of the generation lives inside ``generate()``, so forwards of other prompts in between do not
  touch it; model attributes that a forward overwrites (Qwen-VL's ``rope_deltas``) are saved and restored by the
  caller (:func:`generation_state` / :func:`restore_generation_state`).

A scoring call therefore waits at most for one decoding step (or the prefill in progress), not for the whole
generation. Scoring goes first: under a continuous stream of scoring calls generation waits (the service's
scoring lane has one worker that pauses between batches, so it does not starve generation there).

The lock is reentrant for its holder (like ``threading.RLock``); a nested holder never lends (the outer frame
may rely on the model state it set).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

#: Model attributes (on any submodule) that a forward of other prompts overwrites and the next decoding step of a
#: generation reads: Qwen2-VL/Qwen2.5-VL/Qwen3-VL (and other M-RoPE models) cache the batch's ``rope_deltas``.
GENERATION_STATE_ATTRS = ("rope_deltas",)


class ModelLock:
    """A reentrant lock with priority acquirers that a plain holder can lend the lock to (see the module doc)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._waiting = 0
        self._lender: int | None = None  # the thread that lent the lock and takes it back before plain acquirers
        #: how many times :meth:`lend` handed the lock over (for tests, benchmarks and logs)
        self.lends = 0

    @property
    def waiting(self) -> int:
        """How many priority acquirers wait now (read without the lock: a hint, re-checked by :meth:`lend`)."""
        return self._waiting

    def acquire(self, priority: bool = False) -> bool:
        """Take the lock (reentrant); a priority acquirer goes before every plain one that waits."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            if priority:
                self._waiting += 1
                try:
                    while self._owner is not None:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
            else:
                while self._owner is not None or self._waiting or self._lender is not None:
                    self._cond.wait()
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a ModelLock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def __enter__(self) -> ModelLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @contextlib.contextmanager
    def priority(self) -> Iterator[None]:
        """Hold the lock as a priority acquirer (scoring forwards)."""
        self.acquire(priority=True)
        try:
            yield
        finally:
            self.release()

    def lend(self) -> bool:
        """When priority acquirers wait and this thread holds the lock once, let all of them (and any that arrive
        meanwhile) run, then take the lock back before any plain acquirer; returns whether it lent. A no-op
        otherwise."""
        me = threading.get_ident()
        with self._cond:
            if not self._waiting or self._owner != me or self._depth != 1:
                return False
            self._owner, self._depth, self._lender = None, 0, me
            self.lends += 1
            self._cond.notify_all()
            try:
                while self._owner is not None or self._waiting:
                    self._cond.wait()
            except BaseException:  # interrupted (KeyboardInterrupt): no longer the holder; let plain acquirers on
                self._lender = None
                self._cond.notify_all()
                raise
            self._owner, self._depth, self._lender = me, 1, None
            return True


def generation_state(model: Any) -> list[tuple[Any, str, Any]]:
    """``(module, attribute, value)`` of each :data:`GENERATION_STATE_ATTRS` attribute of the model's submodules."""
    out = []
    for module in model.modules():
        for attr in GENERATION_STATE_ATTRS:
            if attr in getattr(module, "__dict__", {}):
                out.append((module, attr, module.__dict__[attr]))
    return out


def restore_generation_state(state: list[tuple[Any, str, Any]]) -> None:
    for module, attr, value in state:
        setattr(module, attr, value)
