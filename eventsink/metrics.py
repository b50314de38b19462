"""Metrics: the pipeline's counters as Prometheus text and through the OpenTelemetry API.

Nothing here counts anything of its own. The numbers come from what the pipeline already
keeps: each lane's :class:`~eventsink.pipeline.lane.LaneStats`, the intake's accepted and
dropped counts, and the outbox backlog, all gathered in one :meth:`Pipeline.status` document.
:func:`samples` turns that document into metric samples; :func:`prometheus_text` writes them in
the Prometheus text format; :func:`register_otel` records the same numbers through the
OpenTelemetry metrics API (a no-op unless an SDK is installed, so ``datasette-otel-prometheus``
and ``datasette-otel-viewer`` show them when they are installed).

==============================================  =========  =================================
name                                            type       labels
==============================================  =========  =================================
``eventsink_events_accepted_total``             counter
``eventsink_events_delivered_total``            counter    ``sink``
``eventsink_events_dropped_total``              counter    ``reason``
``eventsink_events_dead_lettered_total``        counter    ``sink``
``eventsink_send_errors_total``                 counter    ``sink``, ``kind``
``eventsink_pending_events``                    gauge      ``sink``
``eventsink_oldest_pending_age_seconds``        gauge      ``sink``
``eventsink_sink_paused``                       gauge      ``sink``
``eventsink_dead_letters``                      gauge      ``sink``
``eventsink_send_duration_seconds``             histogram  ``sink``
==============================================  =========  =================================
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ConfigError, PermanentError, RejectedError, SinkPausedError

logger = logging.getLogger("eventsink")

#: Upper bounds (seconds) of the send duration histogram's buckets.
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

#: What ``eventsink_send_errors_total{kind}`` distinguishes.
ERROR_KINDS: tuple[str, ...] = ("retryable", "paused", "rejected", "permanent")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def error_kind(error: BaseException) -> str:
    """The ``kind`` label of a failed send: retryable, paused, rejected or permanent."""
    if isinstance(error, SinkPausedError):
        return "paused"
    if isinstance(error, RejectedError):
        return "rejected"
    if isinstance(error, (PermanentError, ConfigError)):
        return "permanent"
    return "retryable"  # RetryableError and unexpected exceptions are retried


@dataclass
class Histogram:
    """Cumulative-bucket histogram of durations, as Prometheus exposes them."""

    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=list)
    count: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        for index, bound in enumerate(self.bounds):
            if seconds <= bound:
                self.counts[index] += 1
                break

    def snapshot(self) -> dict[str, Any]:
        """JSON-safe cumulative buckets: ``{"buckets": [[le, count], ...], "count", "sum"}``."""
        running, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            buckets.append([bound, running])
        return {"buckets": buckets, "count": self.count, "sum": round(self.sum, 6)}


def age_seconds(created: str | None, now: float | None = None) -> float | None:
    """Seconds since the ISO-8601 time ``created`` (``None`` when there is none)."""
    if not created:
        return None
    try:
        moment = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return round(max(0.0, (now or time.time()) - moment.timestamp()), 3)


@dataclass(frozen=True)
class Sample:
    """One metric value with its labels."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Family:
    """A metric's name, type and help, and its samples."""

    name: str
    kind: str  # counter, gauge or histogram
    help: str
    samples: list[Sample]


def samples(document: Mapping[str, Any]) -> list[Family]:
    """The metric families of a :meth:`Pipeline.status` document.

    Sinks known only from an outbox file (``eventsink status``) have no counters: only the
    gauges they carry are given.
    """
    sinks: Mapping[str, Mapping[str, Any]] = document.get("sinks", {})

    def per_sink(key: str, convert: Callable[[Any], float] = float) -> list[Sample]:
        return [
            Sample("", (("sink", name),), convert(sink[key]))
            for name, sink in sinks.items()
            if sink.get(key) is not None
        ]

    families = []
    if "accepted" in document:
        families.append(
            Family(
                "eventsink_events_accepted_total",
                "counter",
                "Events accepted by write() since start.",
                [Sample("", (), float(document["accepted"]))],
            )
        )
    families += [
        Family(
            "eventsink_events_delivered_total",
            "counter",
            "Events the sink confirmed.",
            per_sink("delivered"),
        ),
        Family(
            "eventsink_events_dropped_total",
            "counter",
            "Events dropped before the outbox (filtered, overflow, ...).",
            [
                Sample("", (("reason", reason),), float(count))
                for reason, count in sorted(document.get("dropped", {}).items())
            ],
        ),
        Family(
            "eventsink_events_dead_lettered_total",
            "counter",
            "Events moved to the dead-letter store.",
            per_sink("dead_lettered"),
        ),
        Family(
            "eventsink_send_errors_total",
            "counter",
            "Failed sends, by kind: retryable, paused, rejected, permanent.",
            [
                Sample("", (("sink", name), ("kind", kind)), float(errors.get(kind, 0)))
                for name, sink in sinks.items()
                if (errors := sink.get("send_errors")) is not None
                for kind in ERROR_KINDS
            ],
        ),
        Family(
            "eventsink_pending_events",
            "gauge",
            "Undelivered events of the sink in the outbox (waiting or being sent).",
            [
                Sample("", (("sink", name),), float(sink["pending"] + sink.get("in_flight", 0)))
                for name, sink in sinks.items()
            ],
        ),
        Family(
            "eventsink_oldest_pending_age_seconds",
            "gauge",
            "Age of the sink's oldest undelivered event (0 when none).",
            [
                Sample("", (("sink", name),), float(sink.get("oldest_pending_age") or 0))
                for name, sink in sinks.items()
            ],
        ),
        Family(
            "eventsink_dead_letters",
            "gauge",
            "Events of the sink in the dead-letter store now (replay moves them back).",
            per_sink("dead_letters"),
        ),
        Family(
            "eventsink_sink_paused",
            "gauge",
            "1 while the sink is paused until a person acts (e.g. a refused token).",
            [
                Sample("", (("sink", name),), 1.0 if sink.get("paused") else 0.0)
                for name, sink in sinks.items()
            ],
        ),
    ]
    durations = []
    for name, sink in sinks.items():
        histogram = sink.get("send_seconds")
        if histogram is None:
            continue
        label = ("sink", name)
        for bound, count in histogram["buckets"]:
            durations.append(Sample("_bucket", (label, ("le", _number(bound))), float(count)))
        durations.append(Sample("_bucket", (label, ("le", "+Inf")), float(histogram["count"])))
        durations.append(Sample("_sum", (label,), float(histogram["sum"])))
        durations.append(Sample("_count", (label,), float(histogram["count"])))
    families.append(
        Family(
            "eventsink_send_duration_seconds",
            "histogram",
            "How long the sink's send() took, successful or not.",
            durations,
        )
    )
    return families


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(float(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(families: Iterable[Family]) -> str:
    """The Prometheus text exposition format (version 0.0.4) of ``families``."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels)
            name = family.name + sample.name
            lines.append(
                f"{name}{{{labels}}} {_number(sample.value)}"
                if labels
                else f"{name} {_number(sample.value)}"
            )
    return "\n".join(lines) + "\n"


# -- OpenTelemetry -------------------------------------------------------------------------

_otel_lock = threading.Lock()
_otel_pipelines: weakref.WeakSet[Any] = weakref.WeakSet()
_otel_instruments: dict[str, Any] | None = None


def register_otel(pipeline: Any) -> None:
    """Record ``pipeline``'s metrics through the OpenTelemetry API from now on.

    The instruments are made once per process, on the global meter provider (a no-op until an
    SDK installs a real one). Counters and gauges are observed from the pipeline's latest
    status snapshot when a reader collects; send durations are recorded as they happen.
    """
    global _otel_instruments
    try:
        from opentelemetry import metrics as otel
    except ImportError:  # pragma: no cover - opentelemetry-api is a dependency
        return
    with _otel_lock:
        _otel_pipelines.add(pipeline)
        if _otel_instruments is not None:
            return
        meter = otel.get_meter("eventsink")
        instruments: dict[str, Any] = {}
        for name, kind, help_text in _OTEL_OBSERVED:
            make = (
                meter.create_observable_counter
                if kind == "counter"
                else (meter.create_observable_gauge)
            )
            instruments[name] = make(
                name, callbacks=[_otel_callback(name, otel)], description=help_text
            )
        instruments["eventsink_send_duration_seconds"] = meter.create_histogram(
            "eventsink_send_duration_seconds",
            unit="s",
            description="How long the sink's send() took, successful or not.",
        )
        _otel_instruments = instruments


def record_send_duration(sink: str, seconds: float) -> None:
    """Record one send's duration on the OpenTelemetry histogram (if instruments exist)."""
    instruments = _otel_instruments
    if instruments is not None:
        instruments["eventsink_send_duration_seconds"].record(seconds, {"sink": sink})


_OTEL_OBSERVED = (
    ("eventsink_events_accepted_total", "counter", "Events accepted by write() since start."),
    ("eventsink_events_delivered_total", "counter", "Events the sink confirmed."),
    ("eventsink_events_dropped_total", "counter", "Events dropped before the outbox."),
    ("eventsink_events_dead_lettered_total", "counter", "Events moved to the dead letters."),
    ("eventsink_send_errors_total", "counter", "Failed sends, by kind."),
    ("eventsink_pending_events", "gauge", "Undelivered events of the sink in the outbox."),
    ("eventsink_oldest_pending_age_seconds", "gauge", "Age of the oldest undelivered event."),
    ("eventsink_sink_paused", "gauge", "1 while the sink is paused until a person acts."),
    ("eventsink_dead_letters", "gauge", "Events of the sink in the dead-letter store now."),
)


def _otel_callback(name: str, otel: Any) -> Callable[[Any], list[Any]]:
    def observe(options: Any) -> list[Any]:
        # Attributes are the Prometheus labels (no "instance": Prometheus adds its own); the
        # pipelines of one process are summed, as one scrape of the process would be.
        totals: dict[tuple[tuple[str, str], ...], float] = {}
        for pipeline in list(_otel_pipelines):
            if pipeline.closed or pipeline.started_at is None:
                continue
            for family in samples(pipeline.status_snapshot()):
                if family.name == name:
                    for sample in family.samples:
                        totals[sample.labels] = totals.get(sample.labels, 0.0) + sample.value
        return [otel.Observation(value, dict(labels)) for labels, value in totals.items()]

    return observe


# -- the metrics_addr server ---------------------------------------------------------------


def parse_addr(value: str, key: str = "metrics_addr") -> tuple[str, int]:
    """``host:port`` (``:port`` means every interface) as a pair; ConfigError naming ``key``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"config key {key!r} must be 'host:port' (e.g. '127.0.0.1:9464'), not {value!r}",
            key=key,
        )
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """Serve ``GET /metrics`` (Prometheus text) on ``host:port`` from the pipeline's loop.

    A deliberately small HTTP/1.0 responder: one request per connection, no keep-alive, like
    the exporters Prometheus scrapes every few seconds. ``metrics`` is awaited per request.
    """

    def __init__(self, addr: str, metrics: Callable[[], Any]) -> None:
        self.host, self.port = parse_addr(addr)
        self._metrics = metrics
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as error:
            raise ConfigError(
                f"config key 'metrics_addr': cannot listen on {self.host}:{self.port}: "
                f"{error.strerror or error}",
                key="metrics_addr",
            ) from None
        sockets = self._server.sockets or []
        if sockets:
            self.port = sockets[0].getsockname()[1]  # the real one when 0 was asked for
        logger.info("eventsink: metrics on http://%s:%d/metrics", self.host, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, kind = "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
            elif path not in ("/metrics", "/"):
                status, body, kind = "404 Not Found", b"GET /metrics\n", "text/plain"
            else:
                status, kind = "200 OK", CONTENT_TYPE
                body = (await self._metrics()).encode()
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            asyncio.TimeoutError,
            ConnectionError,
        ):
            pass
        except Exception:
            logger.exception("eventsink: the metrics endpoint failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
