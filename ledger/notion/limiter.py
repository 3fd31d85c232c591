"""One token bucket for all of the process's Notion traffic (mirror, actions, comments,
approval polling): Notion allows an average of three requests per second per integration,
with small bursts. A 429's ``Retry-After`` pauses every user of the bucket, not just the one
that got it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["TokenBucket"]

_EPSILON = 1e-9


@dataclass(slots=True)
class TokenBucket:
    """At most ``burst`` requests at once, refilled at ``rate`` per second. In any window of
    ``w`` seconds at most ``burst + rate * w`` requests start: the defaults (2.7/s, burst 3)
    keep any 10-second window at or under 30 requests, i.e. 3 per second averaged.

    ``acquire`` waits for a token (fair: callers are served in arrival order); ``pause``
    holds everyone back until a moment (a 429's Retry-After)."""

    rate: float = 2.7
    burst: float = 3.0
    monotonic: Callable[[], float] = time.monotonic
    _tokens: float = field(init=False)
    _stamp: float = field(init=False)
    _paused_until: float = field(default=0.0, init=False)
    _lock: asyncio.Lock | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self._tokens = self.burst
        self._stamp = self.monotonic()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self) -> float:
        """Seconds until a token is free (0 = now); takes it when it is. Not thread-safe:
        ``acquire`` serializes callers."""
        now = self.monotonic()
        if now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:  # rounding must never leave a caller waiting forever
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate

    async def acquire(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while (wait := self.delay()) > 0:
                await asyncio.sleep(wait)

    def pause(self, seconds: float) -> None:
        """Nobody starts a request for ``seconds`` (and the bucket is empty afterwards)."""
        until = self.monotonic() + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            self._tokens = 0.0
            self._stamp = until
