"""Several OpenAI-compatible servers of one model ("replicas") behind one backend.

Each request goes to the live replica with the fewest requests in flight, at most ``concurrency`` at once per
replica. A replica that cannot be reached (connection refused, DNS, TLS, a timeout) is set aside and its
request goes to another one; a replica set aside is probed again (``GET /models``) after ``revive_s`` seconds
or when no other is left. When none answers, :class:`~lmmiqa.errors.ServerUnavailableError` ends the run with
one message naming every URL and what went wrong there (a run-level error, as a model that cannot be loaded).
Rate limits (429) and server errors (5xx) are retried with exponential backoff without setting the replica
aside; other HTTP errors (400, 413, ...) belong to the request and are raised at once.

One replica is the plain single-server case: the same rules apply, so a server that dies in the middle of a run
ends it after ``max_retries`` backoff probes instead of failing every remaining image one by one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lmmiqa.errors import BackendError, ServerUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: seconds a replica that could not be reached is left aside before it is probed again
REVIVE_S = 30.0
#: first backoff pause in seconds (doubled per retry, capped at 8 s)
BACKOFF_S = 0.5


@dataclass
class Replica:
    """One server: its base URL, its client and its state (guarded by the pool's lock)."""

    url: str
    client: Any
    in_flight: int = 0
    down_since: float | None = None
    last_error: str = ""
    served: int = 0
    failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.down_since is None


def backoff(attempt: int, base: float = BACKOFF_S) -> float:
    """Pause before retry ``attempt`` (1-based): base·2^(attempt-1), at most 8 s."""
    return float(min(8.0, base * (2 ** max(0, attempt - 1))))


def connection_problem(err: BaseException, url: str, timeout: float) -> str:
    """What an unreachable server's error means, in words, with the underlying cause."""
    cause: BaseException | None = err
    chain: list[str] = []
    while cause is not None and len(chain) < 6:
        chain.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    text = " | ".join(chain)
    low = text.lower()
    if "timeout" in low or "timed out" in low:
        return f"no answer within {timeout:g} s ({chain[-1]}): is the server up and reachable from here (firewall, proxy)?"
    if "refused" in low:
        return "connection refused: nothing listens there. Is the server running, and are the host and port right?"
    if any(k in low for k in ("name or service not known", "nodename nor servname", "getaddrinfo", "name resolution",
                              "no address associated", "temporary failure in name")):
        return f"the host name does not resolve ({chain[-1]}): check the host in the URL"
    if any(k in low for k in ("ssl", "tls", "certificate", "wrong_version_number")):
        return (f"TLS failed ({chain[-1]}): http:// for a plain server, https:// only where the server speaks TLS "
                "(and its certificate must be trusted here)")
    return f"cannot connect ({chain[-1]})"


class ReplicaPool:
    """Spread calls over replicas; see the module docstring.

    Args:
        replicas: the servers (at least one).
        concurrency: requests in flight at once per replica.
        max_retries: retries of one call (on another replica, or after a backoff pause) before it fails.
        probe: ``probe(replica) -> None`` raises when the replica does not answer (used to revive one).
        is_connection_error: whether an exception means the replica cannot be reached.
        is_retryable: whether an exception is worth a retry on the same or another replica (429, 5xx).
        timeout: the request timeout, for messages.
    """

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        concurrency: int,
        max_retries: int,
        probe: Callable[[Replica], None],
        is_connection_error: Callable[[BaseException], bool],
        is_retryable: Callable[[BaseException], bool],
        timeout: float,
        revive_s: float = REVIVE_S,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        if not replicas:
            raise BackendError("no server to send requests to")
        self.replicas = list(replicas)
        self.concurrency = int(concurrency)
        self.max_retries = int(max_retries)
        self._probe = probe
        self._is_conn = is_connection_error
        self._is_retryable = is_retryable
        self.timeout = float(timeout)
        self.revive_s = float(revive_s)
        self.backoff_s = float(backoff_s)
        self._cond = threading.Condition()
        self._reviving = False

    # ------------------------------------------------------------------------------------------ state
    def live(self) -> list[Replica]:
        with self._cond:
            return [r for r in self.replicas if r.alive]

    def mark_down(self, rep: Replica, why: str) -> None:
        with self._cond:
            if rep.alive:
                log.warning("replica %s set aside: %s", rep.url, why)
            rep.down_since = time.monotonic()
            rep.last_error = why
            rep.failures += 1
            self._cond.notify_all()

    def _mark_up(self, rep: Replica) -> None:
        with self._cond:
            if not rep.alive:
                log.warning("replica %s answers again", rep.url)
            rep.down_since = None
            rep.last_error = ""
            self._cond.notify_all()

    def unavailable(self) -> ServerUnavailableError:
        """The error that ends the run: no replica answers."""
        if len(self.replicas) == 1:
            r = self.replicas[0]
            return ServerUnavailableError(
                f"the model server at {r.url} stopped answering: {r.last_error or 'not reachable'}"
            )
        lines = [f"{r.url}: {r.last_error or 'not reachable'}" for r in self.replicas]
        return ServerUnavailableError(f"none of the {len(self.replicas)} replicas answers: " + "; ".join(lines))

    def _revive_due(self, now: float) -> list[Replica]:
        return [r for r in self.replicas if not r.alive and now - (r.down_since or now) >= self.revive_s]

    def _try_revive(self, reps: Sequence[Replica]) -> None:
        for rep in reps:
            try:
                self._probe(rep)
            except Exception as err:  # still down: keep it aside, restart its clock
                with self._cond:
                    rep.down_since = time.monotonic()
                    rep.last_error = connection_problem(err, rep.url, self.timeout) if self._is_conn(err) else str(err)
            else:
                self._mark_up(rep)

    def _acquire(self) -> Replica:
        """A live replica with a free slot (the least busy); revives replicas that are due; raises
        :class:`ServerUnavailableError` when none answers after ``max_retries`` backoff probes."""
        attempt = 0
        while True:
            due: list[Replica] = []
            with self._cond:
                now = time.monotonic()
                due = [] if self._reviving else self._revive_due(now)
                live = [r for r in self.replicas if r.alive]
                if live and not due:
                    free = [r for r in live if r.in_flight < self.concurrency]
                    if free:
                        rep = min(free, key=lambda r: (r.in_flight, r.served))
                        rep.in_flight += 1
                        return rep
                    self._cond.wait(timeout=1.0)
                    continue
                if not live and self._reviving:
                    self._cond.wait(timeout=1.0)
                    continue
                if not live:
                    due = [r for r in self.replicas if not r.alive]
                self._reviving = True
            try:
                if not live:
                    if attempt > self.max_retries:
                        raise self.unavailable()
                    if attempt:
                        time.sleep(backoff(attempt, self.backoff_s))
                    attempt += 1
                self._try_revive(due)
            finally:
                with self._cond:
                    self._reviving = False
                    self._cond.notify_all()

    def _release(self, rep: Replica, ok: bool) -> None:
        with self._cond:
            rep.in_flight -= 1
            if ok:
                rep.served += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------------------------------- calls
    def call(self, fn: Callable[[Replica], T]) -> T:
        """``fn(replica)`` on a live replica; moved to another one when the replica cannot be reached."""
        attempt = 0
        while True:
            rep = self._acquire()
            ok = False
            try:
                out = fn(rep)
                ok = True
                return out
            except Exception as err:
                if self._is_conn(err):
                    self.mark_down(rep, connection_problem(err, rep.url, self.timeout))
                    attempt += 1
                    if attempt > self.max_retries + len(self.replicas):
                        raise self.unavailable() from err
                    continue  # _acquire revives or raises when no replica is left
                if self._is_retryable(err) and attempt < self.max_retries:
                    attempt += 1
                    time.sleep(backoff(attempt, self.backoff_s))
                    continue
                raise
            finally:
                self._release(rep, ok)

    def stats(self) -> list[dict[str, Any]]:
        """Requests answered and failures per replica (for benchmarks and ``describe()``)."""
        with self._cond:
            return [{"url": r.url, "served": r.served, "failures": r.failures, "alive": r.alive} for r in self.replicas]
