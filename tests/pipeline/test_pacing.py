"""Pacing on virtual time: the token bucket, backoff and log throttling, no real sleeps."""

from __future__ import annotations

import asyncio

import pytest

from eventsink.pipeline.pacing import LogThrottle, TokenBucket, backoff_delay


class VirtualTime:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def acquisitions_within(bucket: TokenBucket, clock: VirtualTime, window: float, tries: int):
    """Acquire ``tries`` times on virtual time; return how many got through by ``window``."""

    async def run() -> list[float]:
        moments = []
        for _ in range(tries):
            await bucket.acquire()
            moments.append(clock.now)
        return moments

    return sum(1 for moment in asyncio.run(run()) if moment <= window)


class TestTokenBucket:
    """max_rate per time_period, as a token bucket that starts full."""

    def test_two_per_second_over_three_seconds_is_at_most_eight_calls(self):
        """The property TestRateLimit checks with real time, here on a virtual clock."""
        clock = VirtualTime()
        bucket = TokenBucket(2, 1.0, clock=clock, sleep=clock.sleep)
        assert 6 <= acquisitions_within(bucket, clock, 3.0, 30) <= 8

    @pytest.mark.parametrize(("rate", "period", "window"), [(5, 1.0, 10.0), (1, 0.5, 4.0)])
    def test_never_more_than_rate_times_one_plus_t_over_period(self, rate, period, window):
        clock = VirtualTime()
        bucket = TokenBucket(rate, period, clock=clock, sleep=clock.sleep)
        got = acquisitions_within(bucket, clock, window, 200)
        assert got <= rate * (1 + window / period)
        assert got >= rate * window / period  # and the rate is actually reached

    def test_the_bucket_starts_full(self):
        clock = VirtualTime()
        bucket = TokenBucket(3, 1.0, clock=clock, sleep=clock.sleep)
        assert acquisitions_within(bucket, clock, 0.0, 3) == 3

    def test_unlimited_never_waits(self):
        clock = VirtualTime()
        bucket = TokenBucket(None, clock=clock, sleep=clock.sleep)
        assert bucket.delay() == 0
        assert acquisitions_within(bucket, clock, 0.0, 100) == 100


class TestBackoff:
    """Full jitter below an exponential ceiling; Retry-After is a floor."""

    def test_ceiling_doubles_up_to_the_maximum(self):
        ceilings = [backoff_delay(n, 0.5, 5.0, rand=lambda: 1.0) for n in range(1, 7)]
        assert ceilings == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]

    def test_retry_after_is_a_floor(self):
        assert backoff_delay(1, 0.5, 5.0, 3.0, rand=lambda: 0.0) == 3.0


class TestLogThrottle:
    """One message per key per interval, with the count of those suppressed."""

    def test_suppresses_within_the_interval_and_counts(self):
        clock = VirtualTime()
        throttle = LogThrottle(60.0, clock=clock)
        assert throttle.allow("retry") == 0
        assert throttle.allow("retry") is None
        assert throttle.allow("other") == 0
        clock.now += 61
        assert throttle.allow("retry") == 1
