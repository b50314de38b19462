"""The testing kit: recording and flaky sinks, event capture, fixtures and the contract itself."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

import eventsink
from eventsink.config import DeliverySettings, Settings, SinkConfig
from eventsink.exceptions import RejectedError, RetryableError, SinkPausedError
from eventsink.outbox import MemoryOutbox
from eventsink.pipeline.pipeline import Pipeline
from eventsink.plugins import make_plugin_manager, sink_classes
from eventsink.testing import (
    FlakySink,
    MemorySink,
    capture_events,
    error_for_status,
    plugin_manager,
    wait_until,
)

pytest_plugins = ["pytester"]


async def deliver(sink: FlakySink, count: int, **delivery: Any) -> tuple[Pipeline, list[Any]]:
    """Write ``count`` events in one batch through a real pipeline into ``sink``; flush."""
    settings = Settings(
        instance="test",
        sinks=(
            SinkConfig(
                type=sink.name,
                name="flaky",
                options={},
                delivery=DeliverySettings(
                    batch_limit=1000, flush_interval=60, retry_initial=0.001, **delivery
                ),
            ),
        ),
    )
    errors: list[Any] = []

    class Recorder:
        @eventsink.hookimpl
        def eventsink_send_error(self, error: BaseException, final: bool) -> None:
            errors.append((error, final))

    pm = make_plugin_manager(entry_points=False)
    pm.register(Recorder())
    pipeline = Pipeline(settings, pm=pm, outbox=MemoryOutbox(), sinks={"flaky": sink})
    await pipeline.start()
    for number in range(count):
        await pipeline.write_async("things", {"n": number}, wait_committed=False)
    assert await pipeline.flush(timeout=10)
    return pipeline, errors


class TestErrorForStatus:
    """Status codes map to the delivery errors the lanes act on."""

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (500, RetryableError),
            (503, RetryableError),
            (429, RetryableError),
            (401, SinkPausedError),
            (403, SinkPausedError),
            (400, RejectedError),
            (413, RejectedError),
            (404, eventsink.PermanentError),
        ],
    )
    def test_status_maps_to_error(self, status: int, expected: type) -> None:
        """Each status gives an error of the expected class carrying the status."""
        error = error_for_status(status)
        assert type(error) is expected and error.status == status

    def test_success_is_no_error(self) -> None:
        """2xx is not an error."""
        assert error_for_status(200) is None and error_for_status(201) is None

    def test_retry_after_header_becomes_the_floor(self) -> None:
        """A Retry-After header (any case) becomes retry_after in seconds."""
        assert error_for_status(429, {"retry-after": "2"}).retry_after == 2.0
        assert error_for_status(503).retry_after is None


class TestFlakySinkInAPipeline:
    """Scripted failures drive the real lanes: retry, pause, split, dead-letter."""

    async def test_retries_until_success(self) -> None:
        """500 then 429 with Retry-After are retried; the batch is stored once."""
        sink = FlakySink([500, (429, {"Retry-After": "0.01"}), 200])
        pipeline, errors = await deliver(sink, 3)
        await pipeline.close()
        assert [outcome for _, outcome in sink.attempts] == ["500", "429", "200"]
        assert len(sink.events) == 3
        assert [(type(error), final) for error, final in errors] == [
            (RetryableError, False),
            (RetryableError, False),
        ]
        assert errors[1][0].retry_after == 0.01

    async def test_refused_token_pauses_then_resumes(self) -> None:
        """401 pauses the sink; the next attempt after pause_interval delivers."""
        sink = FlakySink([401])
        pipeline, errors = await deliver(sink, 2, pause_interval=0.01)
        await pipeline.close()
        assert isinstance(errors[0][0], SinkPausedError) and errors[0][1] is False
        assert len(sink.events) == 2

    async def test_rejected_batch_is_split(self) -> None:
        """400 on a batch of four splits it in halves, both then delivered."""
        sink = FlakySink([400])
        pipeline, _ = await deliver(sink, 4)
        await pipeline.close()
        assert [len(ids) for ids, _ in sink.attempts] == [4, 2, 2]
        assert len(sink.events) == 4

    async def test_not_found_is_dead_lettered(self) -> None:
        """404 moves the batch to the dead-letter store; nothing is stored."""
        sink = FlakySink([404])
        pipeline, errors = await deliver(sink, 3)
        status = await pipeline.status()
        await pipeline.close()
        assert sink.events == [] and errors[0][1] is True
        assert status["sinks"]["flaky"]["dead_letters"] == 3

    async def test_an_exception_step_is_raised(self) -> None:
        """An exception in the script is raised as is (a sink bug): retried, then delivered."""
        sink = FlakySink([ValueError("boom")])
        pipeline, errors = await deliver(sink, 1)
        await pipeline.close()
        assert isinstance(errors[0][0], ValueError) and len(sink.events) == 1


class TestCapture:
    """capture_events runs a real client into a memory sink."""

    def test_captures_what_was_written(self) -> None:
        """Written events come back once each, with their data and table."""
        with capture_events(instance="web-1") as capture:
            first = capture.write("signups", {"user": "ada"})
            capture.write("logins", {"user": "ada"})
            assert capture.events[0].id == first
            assert capture.tables() == ["signups", "logins"]
            assert capture.rows("signups")[0]["user"] == "ada"
            assert capture.rows("signups")[0]["instance"] == "web-1"

    def test_enrich_and_filter_hooks_run(self) -> None:
        """Hooks registered on the plugin manager shape the captured events."""

        class Plugin:
            @eventsink.hookimpl
            def eventsink_enrich(self, event: eventsink.Event) -> None:
                event.data["app"] = "shop"

            @eventsink.hookimpl
            def eventsink_filter(self, event: eventsink.Event) -> bool:
                return event.table != "noise"

        pm = plugin_manager(entry_points=False)
        pm.register(Plugin())
        with capture_events(pm=pm) as capture:
            assert capture.write("noise", {}) is None
            capture.write("orders", {"total": 3})
            rows = capture.rows()
            assert [(row["total"], row["app"]) for row in rows] == [(3, "shop")]

    def test_testing_sinks_are_not_registered_globally(self) -> None:
        """memory and flaky exist only through eventsink.testing.plugin_manager()."""
        assert "memory" not in sink_classes(make_plugin_manager())
        assert {"memory", "flaky"} <= set(sink_classes(plugin_manager()))


class TestPytestPlugin:
    """The fixtures arrive through the pytest11 entry point, with no conftest."""

    def test_memory_sink_fixture(self, memory_sink: MemorySink) -> None:
        """memory_sink is a fresh recording sink."""
        assert isinstance(memory_sink, MemorySink) and memory_sink.events == []

    def test_flaky_sink_fixture(self, flaky_sink: Any) -> None:
        """flaky_sink builds scripted sinks."""
        sink = flaky_sink([503], then=201)
        assert isinstance(sink, FlakySink) and sink.remaining == 1

    def test_captured_events_fixture(self, captured_events: Any) -> None:
        """captured_events is a live capture."""
        captured_events.write("t", {"x": 1})
        assert wait_until(lambda: captured_events.events)[0].data == {"x": 1}


class TestWaitUntil:
    """wait_until returns the truthy value or fails after its deadline."""

    def test_returns_value(self) -> None:
        """A predicate true at once returns its value."""
        assert wait_until(lambda: 42) == 42

    def test_times_out(self) -> None:
        """A predicate that stays false raises TimeoutError."""
        with pytest.raises(TimeoutError):
            wait_until(lambda: False, timeout=0.05)


BROKEN_SINKS = textwrap.dedent(
    """
    import pytest
    from eventsink import Option, Sink
    from eventsink.testing import SinkContract

    STORE = []

    class DuplicatingSink(Sink):
        name = "duplicating"
        async def send(self, batch):
            STORE.extend(event.row() for event in batch)

    class LosingSink(Sink):
        name = "losing"
        async def send(self, batch):
            STORE.extend(event.row() for event in batch[1:])

    class LeakySink(Sink):
        name = "leaky"
        options = (Option("token", str, "", "A token.", secret=True),)
        async def send(self, batch):
            pass
        def describe(self):
            return "leaky with " + self.config["token"].reveal()

    class Base(SinkContract):
        @pytest.fixture
        def read_stored(self):
            STORE.clear()
            return lambda: list(STORE)

    class TestDuplicating(Base):
        @pytest.fixture
        def make_sink(self):
            return DuplicatingSink

    class TestLosing(Base):
        @pytest.fixture
        def make_sink(self):
            return LosingSink

    class TestLeaky(Base):
        @pytest.fixture
        def make_sink(self):
            return lambda: LeakySink(token="s3cret-value")
    """
)


class TestContractCatchesBrokenSinks:
    """The contract suite fails sinks that break its rules (nested pytest, no asyncio plugin)."""

    def test_broken_sinks_fail(self, pytester: pytest.Pytester) -> None:
        """Duplicates, lost events and a leaked secret each fail the right tests."""
        pytester.makepyfile(test_broken=BROKEN_SINKS)
        result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-p", "no:asyncio")
        outcomes = {
            report.nodeid.split("::", 1)[1]: report.outcome
            for report in result.reprec.getreports("pytest_runtest_logreport")
            if report.when == "call"
        }
        assert outcomes["TestDuplicating::test_same_batch_twice_is_stored_once"] == "failed"
        assert outcomes["TestDuplicating::test_delivers_a_batch"] == "passed"
        assert outcomes["TestLosing::test_delivers_a_batch"] == "failed"
        assert outcomes["TestLeaky::test_describe_and_repr_hide_secrets"] == "failed"
        assert outcomes["TestLeaky::test_open_and_close_twice_are_safe"] == "passed"
