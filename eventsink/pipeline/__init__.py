"""The delivery engine: events in at the intake, out through one lane per sink.

``intake`` is the front (thread-safe, applies the overflow policy), ``capacity`` the one count
of undelivered events against ``max_events``/``max_bytes`` (the intake reserves, the lanes
settle), ``lane`` one sink's delivery loop (batch, rate-limit, retry, dead-letter), ``pacing``
the token bucket and backoff they use, ``history`` the last hour of each sink for the status
page, ``threads`` the worker threads for blocking calls, and ``pipeline`` ties them to an
outbox. ``runner`` drives a pipeline from ordinary code on a background thread (the client and
the CLI), and ``signals`` makes SIGTERM stop such a process like Ctrl-C.
"""

from .pipeline import Pipeline

__all__ = ["Pipeline"]
