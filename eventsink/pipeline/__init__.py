"""The delivery engine: events in at the intake, out through one lane per sink.

``intake`` is the front (thread-safe, applies the overflow policy), ``capacity`` the one count
of undelivered events against ``max_events``/``max_bytes`` (the intake reserves, the lanes
settle), ``lane`` one sink's delivery loop (batch, rate-limit, retry, dead-letter), ``pacing``
the token bucket and backoff they use, ``threads`` the worker threads for blocking calls, and
``pipeline`` ties them to an outbox.
"""

from .pipeline import Pipeline

__all__ = ["Pipeline"]
