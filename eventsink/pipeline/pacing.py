"""Pacing primitives: the token-bucket rate limiter, retry backoff and log throttling."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

_EPSILON = 1e-9


class TokenBucket:
    """Allow at most ``rate`` acquisitions per ``period`` seconds, in bursts of up to ``rate``.

    The bucket starts full, so over ``t`` seconds at most ``rate * (1 + t / period)`` calls get
    through. ``rate=None`` means unlimited. ``clock`` and ``sleep`` are injectable, so a test
    can run the bucket on virtual time.
    """

    def __init__(
        self,
        rate: int | None,
        period: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.period = period
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(rate or 0)
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        if self.rate is None:
            return
        self._tokens = min(
            float(self.rate), self._tokens + (now - self._updated) * self.rate / self.period
        )
        self._updated = now

    def delay(self) -> float:
        """Seconds until a token is available (0 if one is available now)."""
        if self.rate is None:
            return 0.0
        self._refill()
        if self._tokens >= 1 - _EPSILON:  # a float short of 1 after waiting exactly long enough
            return 0.0
        return (1 - self._tokens) * self.period / self.rate

    async def acquire(self) -> None:
        """Wait until a token is available and take it."""
        if self.rate is None:
            return
        while (wait := self.delay()) > 0:
            await self._sleep(wait)
        self._tokens = max(0.0, self._tokens - 1)


def backoff_delay(
    attempt: int,
    initial: float,
    maximum: float,
    retry_after: float | None = None,
    *,
    rand: Callable[[], float] = random.random,
) -> float:
    """The delay before retry number ``attempt`` (1-based): exponential with full jitter.

    A uniformly random delay between 0 and ``min(maximum, initial * 2**(attempt - 1))``, so
    many senders recovering from one outage spread out; a receiver's ``retry_after`` is a floor.
    """
    ceiling = min(maximum, initial * 2 ** min(attempt - 1, 62))
    delay = rand() * ceiling
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class LogThrottle:
    """Say whether a message with a given key may be logged now: at most once per interval.

    :meth:`allow` returns how many messages with that key were suppressed since the last one
    that was allowed, or ``None`` when this one should be suppressed too.
    """

    def __init__(self, interval: float = 60.0, *, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
