"""Metrics: names and format for Prometheus, the metrics_addr server, OpenTelemetry."""

from __future__ import annotations

import httpx
import pytest

import eventsink
from eventsink.config import parse_config
from eventsink.exceptions import (
    ConfigError,
    PermanentError,
    RejectedError,
    RetryableError,
    SinkPausedError,
)
from eventsink.metrics import (
    Histogram,
    error_kind,
    parse_addr,
    prometheus_text,
    samples,
)
from eventsink.outbox import MemoryOutbox
from eventsink.pipeline.pipeline import Pipeline
from eventsink.testing import FlakySink
from eventsink.testing.receiver import free_port

NAMES = {
    "eventsink_events_accepted_total",
    "eventsink_events_delivered_total",
    "eventsink_events_dropped_total",
    "eventsink_events_dead_lettered_total",
    "eventsink_send_errors_total",
    "eventsink_pending_events",
    "eventsink_oldest_pending_age_seconds",
    "eventsink_sink_paused",
    "eventsink_send_duration_seconds",
}


def parse(text: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value} (comments skipped)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


class TestFormat:
    """The Prometheus text format with the issue's metric names."""

    def test_every_name_has_help_and_type(self):
        document = {
            "accepted": 3,
            "dropped": {"filtered": 1},
            "sinks": {
                "a": {
                    "delivered": 2,
                    "dead_lettered": 1,
                    "send_errors": {"retryable": 4},
                    "pending": 1,
                    "in_flight": 0,
                    "oldest_pending_age": 1.5,
                    "dead_letters": 1,
                    "paused": None,
                    "send_seconds": Histogram().snapshot(),
                }
            },
        }
        text = prometheus_text(samples(document))
        for name in NAMES:
            assert f"# TYPE {name} " in text and f"# HELP {name} " in text
        values = parse(text)
        assert values["eventsink_events_accepted_total"] == 3
        assert values['eventsink_events_dropped_total{reason="filtered"}'] == 1
        assert values['eventsink_send_errors_total{sink="a",kind="retryable"}'] == 4
        assert values['eventsink_send_errors_total{sink="a",kind="paused"}'] == 0
        assert values['eventsink_oldest_pending_age_seconds{sink="a"}'] == 1.5
        assert values['eventsink_sink_paused{sink="a"}'] == 0

    def test_label_values_are_escaped(self):
        text = prometheus_text(samples({"sinks": {'we"ird\n': {"pending": 0}}}))
        assert 'eventsink_pending_events{sink="we\\"ird\\n"} 0' in text

    def test_histogram_buckets_are_cumulative(self):
        histogram = Histogram(bounds=(0.1, 1.0))
        for seconds in (0.05, 0.5, 0.7, 3.0):
            histogram.observe(seconds)
        document = {"sinks": {"a": {"pending": 0, "send_seconds": histogram.snapshot()}}}
        values = parse(prometheus_text(samples(document)))
        assert values['eventsink_send_duration_seconds_bucket{sink="a",le="0.1"}'] == 1
        assert values['eventsink_send_duration_seconds_bucket{sink="a",le="1"}'] == 3
        assert values['eventsink_send_duration_seconds_bucket{sink="a",le="+Inf"}'] == 4
        assert values['eventsink_send_duration_seconds_count{sink="a"}'] == 4
        assert values['eventsink_send_duration_seconds_sum{sink="a"}'] == pytest.approx(4.25)

    @pytest.mark.parametrize(
        ("error", "kind"),
        [
            (RetryableError("x"), "retryable"),
            (OSError("x"), "retryable"),
            (SinkPausedError("x"), "paused"),
            (RejectedError("x"), "rejected"),
            (PermanentError("x"), "permanent"),
        ],
    )
    def test_error_kinds(self, error, kind):
        assert error_kind(error) == kind


class TestPipelineMetrics:
    """A pipeline's counters, read from its lanes and intake."""

    async def test_delivered_errors_and_durations(self):
        sink = FlakySink([503])
        settings = parse_config(
            {"sink": "flaky", "instance": "m", "retry_initial": 0.01, "retry_max": 0.01},
            lambda name, key: FlakySink.options,
        )
        pipeline = Pipeline(settings, outbox=MemoryOutbox(), sinks={"flaky": sink})
        await pipeline.start()
        try:
            for n in range(3):
                await pipeline.write_async("t", {"n": n})
            assert await pipeline.flush(timeout=10)
            values = parse(await pipeline.prometheus())
        finally:
            await pipeline.close()
        assert values["eventsink_events_accepted_total"] == 3
        assert values['eventsink_events_delivered_total{sink="flaky"}'] == 3
        assert values['eventsink_send_errors_total{sink="flaky",kind="retryable"}'] == 1
        assert values['eventsink_send_duration_seconds_count{sink="flaky"}'] == 2
        assert values['eventsink_pending_events{sink="flaky"}'] == 0
        assert values['eventsink_sink_paused{sink="flaky"}'] == 0


class TestMetricsAddr:
    """``metrics_addr`` serves /metrics from the client's own loop."""

    def test_client_serves_metrics(self, tmp_path):
        port = free_port()
        path = tmp_path / "out.jsonl"
        with eventsink.Client(
            sink="file", path=str(path), outbox=":memory:", metrics_addr=f"127.0.0.1:{port}"
        ) as client:
            client.write("t", {"n": 1})
            assert client.flush(timeout=10)
            response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            missing = httpx.get(f"http://127.0.0.1:{port}/other", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'eventsink_events_delivered_total{sink="file"} 1' in response.text
        assert missing.status_code == 404
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)

    @pytest.mark.parametrize("value", ["9464", "host:", "host:port", "h:70000"])
    def test_bad_addr_names_the_key(self, value):
        with pytest.raises(ConfigError, match="metrics_addr") as raised:
            eventsink.Client(sink="stdout", outbox=":memory:", metrics_addr=value)
        assert raised.value.key == "metrics_addr"

    def test_addr_forms(self):
        assert parse_addr("127.0.0.1:9464") == ("127.0.0.1", 9464)
        assert parse_addr(":9464") == ("0.0.0.0", 9464)
        assert parse_addr("[::1]:9464") == ("::1", 9464)

    def test_port_in_use_is_a_config_error(self, tmp_path):
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(ConfigError, match="cannot listen"):
                eventsink.Client(sink="stdout", outbox=":memory:", metrics_addr=f"127.0.0.1:{port}")


class TestOpenTelemetry:
    """The same numbers through the OpenTelemetry API, seen by an SDK's reader."""

    def test_sdk_reader_sees_the_counters(self, tmp_path):
        sdk = pytest.importorskip("opentelemetry.sdk.metrics")
        from opentelemetry import metrics as otel
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        otel.set_meter_provider(sdk.MeterProvider(metric_readers=[reader]))
        path = tmp_path / "out.jsonl"
        sinks = [{"type": "file", "name": "otel-file", "path": str(path)}]
        with eventsink.Client(sinks=sinks, outbox=":memory:") as client:
            for n in range(4):
                client.write("t", {"n": n})
            assert client.flush(timeout=10)
            data = reader.get_metrics_data()
        found = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        found[(metric.name, point.attributes.get("sink"))] = point
        assert found[("eventsink_events_delivered_total", "otel-file")].value == 4
        assert found[("eventsink_events_accepted_total", None)].value >= 4
        assert found[("eventsink_pending_events", "otel-file")].value == 0
        assert found[("eventsink_send_duration_seconds", "otel-file")].count >= 1
