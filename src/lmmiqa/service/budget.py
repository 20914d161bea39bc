"""The service's budgets: decoded pixels and request memory in flight, and what one request holds of them.

The memory budget (``--max-memory-mb``) counts every byte a request makes the server hold, from its first body
byte to its answer: the body while it is read and parsed (:func:`body_charge`), each image while it is decoded
(its decoder's full-resolution buffers, :func:`lmmiqa.service.uploads.decode_cost`) and the decoded images
until they are scored. A request that does not fit now is answered 429 (413 when it can never fit), so the
request data of the whole server stays under the budget whatever the image modes and body kinds.
"""

from __future__ import annotations

import threading

#: bytes of memory held per body byte while a request body is read and parsed, by content type: JSON is read
#: whole and decoded to text (2 × the body until the bytes are freed), then each image is a string of that text
#: and its decoded bytes (1 + 1 + 0.75: measured 3.0 × a 28 MiB body, with or without a data: URL prefix); a
#: multipart body is held once as the uploaded files' bytes (Starlette spools each part to disk past 1 MiB) plus
#: the part being spooled
BODY_FACTORS = {"application/json": 4, "multipart/form-data": 2}

#: the body charge's fixed part: the multipart part being spooled in memory, the parser's buffers
BODY_OVERHEAD = 2 * 1024 * 1024


def body_charge(content_type: str, length: int) -> int:
    """Bytes of memory a body of ``length`` bytes of ``content_type`` holds while it is read and parsed."""
    return BODY_FACTORS.get(content_type, 1) * max(0, length) + BODY_OVERHEAD


#: a holder of at most this much memory is small: it may use the part of the budget kept for small ones
SMALL_HOLD = 32 * 1024 * 1024


class Budget:
    """An amount (pixels or bytes) shared by the requests in flight and bounded by ``limit`` (thread-safe).

    ``small_reserve`` of it is kept for holders of at most ``small`` (a holder that grows past it counts as
    large): large uploads filling the budget cannot turn every small request away.
    """

    def __init__(self, limit: int, small_reserve: int = 0, small: int = SMALL_HOLD) -> None:
        self.limit = limit
        self.small_reserve = small_reserve
        self.small = small
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, amount: int, holder_total: int | None = None) -> bool:
        """Take ``amount`` when it fits under the limit (for a large holder, under the limit less the small
        holders' reserve); ``holder_total`` is what the holder will hold with it (default ``amount``). False
        (nothing taken) when it does not fit."""
        cap = self.capacity(amount if holder_total is None else holder_total)
        with self._lock:
            if self.used + amount > cap:
                return False
            self.used += amount
            return True

    def release(self, amount: int) -> None:
        with self._lock:
            self.used = max(0, self.used - amount)

    def capacity(self, total: int) -> int:
        """The most a holder of ``total`` can ever take (the limit, less the small holders' reserve for a large
        one): a holder needing more than this is refused for good (413), not for now (429)."""
        return self.limit if total <= self.small else self.limit - self.small_reserve


#: the name issue 16 gave the decoded-pixel budget
PixelBudget = Budget


class Hold:
    """What one holder took from a :class:`Budget`: it can grow, give back a part, and is released once
    (thread-safe; releasing twice is harmless, so every path that may end the holder's work can release)."""

    def __init__(self, budget: Budget, amount: int = 0) -> None:
        self.budget = budget
        self.amount = amount
        self._lock = threading.Lock()
        self.released = False

    @classmethod
    def take(cls, budget: Budget, amount: int) -> Hold | None:
        """A hold of ``amount`` when it fits, else None."""
        return cls(budget, amount) if budget.reserve(amount) else None

    def grow(self, amount: int) -> bool:
        """Take ``amount`` more when it fits; False otherwise (the hold keeps what it had)."""
        with self._lock:
            if self.released or not self.budget.reserve(amount, self.amount + amount):
                return False
            self.amount += amount
            return True

    def shrink(self, amount: int) -> None:
        """Give back ``amount`` (at most what is held)."""
        with self._lock:
            amount = min(amount, self.amount)
            self.amount -= amount
            if amount > 0:
                self.budget.release(amount)

    def release(self) -> None:
        """Give back everything held (once)."""
        with self._lock:
            if self.released:
                return
            self.released = True
            amount, self.amount = self.amount, 0
        if amount:
            self.budget.release(amount)


class RequestHold:
    """A request's decoded pixels and memory (two :class:`Hold`\\s released together)."""

    def __init__(self, pixels: Hold, memory: Hold) -> None:
        self.pixels = pixels
        self.memory = memory

    def release(self) -> None:
        self.pixels.release()
        self.memory.release()
