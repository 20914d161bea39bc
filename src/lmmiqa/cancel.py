"""Cooperative cancellation of long work running in a thread (decoding an upload, a generation).

A caller that may give up runs the work inside :func:`cancel_when` with a predicate ("has the client left? is
the server shutting down?"); the work calls :func:`check_cancelled` at safe points (between decoded tiles,
between generated tokens), which raises :class:`~lmmiqa.errors.Cancelled` once the predicate holds. Outside any
scope :func:`check_cancelled` does nothing, so library code can call it unconditionally at no cost.

The scope is per thread: work handed to another thread takes its own scope with it (``cancel_when`` there).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from lmmiqa.errors import Cancelled

_local = threading.local()


@contextlib.contextmanager
def cancel_when(predicate: Callable[[], str | None]) -> Iterator[None]:
    """Run the block with ``predicate`` as this thread's cancellation test (scopes nest; every enclosing test
    applies). ``predicate`` returns None to go on, or the reason to stop (the :class:`Cancelled` message)."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(predicate)
    try:
        yield
    finally:
        stack.pop()


def cancel_reason() -> str | None:
    """Why the work of this thread should stop (the first enclosing test that says so), or None."""
    for predicate in getattr(_local, "stack", ()):
        reason = predicate()
        if reason:
            return reason
    return None


def check_cancelled() -> None:
    """Raise :class:`~lmmiqa.errors.Cancelled` when an enclosing :func:`cancel_when` test says stop."""
    reason = cancel_reason()
    if reason:
        raise Cancelled(reason)
