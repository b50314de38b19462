"""``SinkContract``: the rules every sink keeps, as a test suite a sink author subclasses.

::

    from eventsink.testing import SinkContract

    class TestMySinkContract(SinkContract):
        @pytest.fixture
        def make_sink(self, tmp_path):
            return lambda: MySink(path=str(tmp_path / "out"))

        @pytest.fixture
        def read_stored(self, tmp_path):
            return lambda: [json.loads(line) for line in (tmp_path / "out").open()]

The subclass provides two fixtures:

* ``make_sink``: a callable returning a new, unopened sink; every sink it returns writes to the
  same place (the contract makes a second one to play "the process restarted").
* ``read_stored``: a callable returning what the receiver holds, as a list of dicts with at
  least an ``"id"`` key, one per stored record (a duplicate appears twice). Leave it out for a
  sink that keeps nothing readable: the tests that read back are then skipped.

The sink's ``max_concurrent_sends`` is part of the contract: the concurrent scenarios send
that many batches at once through one open sink (8 for ``None``), and check that a pipeline
configured with more ``concurrency`` never calls ``send`` more often at once than declared.

Optional: the ``failure_cases`` fixture (a dict ``name -> (make_failing_sink, expected
exception class)``) to check error mapping, and the class attribute ``idempotent = False`` for
a sink that may store a redelivered event twice (readers then deduplicate by id).

The tests are plain functions that run their own event loop, so no asyncio plugin or mode is
needed; every scenario opens, uses and closes its sinks inside one loop.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest

from ..config import DeliverySettings, Secret, Settings, SinkConfig
from ..event import Event
from ..exceptions import ConfigError, DeliveryError
from ..outbox import MemoryOutbox
from ..pipeline.pipeline import Pipeline
from ..plugins import make_plugin_manager
from ..sink import Sink, call_maybe_sync
from . import make_events

ENVELOPE_KEYS = frozenset({"id", "table", "instance", "created", "data"})


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def _send_batches(make_sink: Callable[[], Sink], *batches: Sequence[Event]) -> None:
    """Open a new sink, send ``batches`` in turn, close it."""

    async def scenario() -> None:
        sink = make_sink()
        await _open(sink)
        for batch in batches:
            await _send(sink, batch)
        await _close(sink)

    _run(scenario())


async def _open(sink: Sink) -> None:
    await call_maybe_sync(sink.open)


async def _send(sink: Sink, batch: Sequence[Event]) -> None:
    await call_maybe_sync(sink.send, list(batch))


async def _close(sink: Sink) -> None:
    await call_maybe_sync(sink.close)


def _data_of(record: dict[str, Any]) -> dict[str, Any]:
    """The event data inside a stored record: an envelope's ``data`` or a flat row's columns."""
    data = record.get("data")
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError:
            data = None
    if isinstance(data, dict):
        return data
    return {key: value for key, value in record.items() if key not in ENVELOPE_KEYS}


def _secrets_of(sink: Sink) -> list[str]:
    config = getattr(sink, "config", {}) or {}
    return [value.reveal() for value in config.values() if isinstance(value, Secret) and value]


class SinkContract:
    """The contract test suite; subclass it as ``Test...`` and provide the fixtures."""

    #: Same event id delivered twice is stored once (``False``: at least once).
    idempotent: ClassVar[bool] = True
    #: Table name of the contract's events.
    table: ClassVar[str] = "contract_events"
    #: Events per batch in the tests.
    batch_size: ClassVar[int] = 5
    #: Batches sent at once when the sink declares no limit (``max_concurrent_sends = None``).
    unlimited_sends: ClassVar[int] = 8

    # -- what a subclass provides ------------------------------------------------------------

    @pytest.fixture
    def make_sink(self) -> Callable[[], Sink]:
        pytest.fail(f"{type(self).__name__} must define a 'make_sink' fixture")

    @pytest.fixture
    def read_stored(self) -> Callable[[], list[dict[str, Any]]]:
        pytest.skip("this sink keeps nothing the test can read back (no 'read_stored' fixture)")

    @pytest.fixture
    def failure_cases(self) -> dict[str, tuple[Callable[[], Sink], type[BaseException]]]:
        return {}

    # -- helpers ---------------------------------------------------------------------------

    def events(self, count: int | None = None) -> list[Event]:
        """Events with several kinds of value: unicode, numbers, booleans."""
        return make_events(
            self.batch_size if count is None else count,
            self.table,
            instance="contract",
            data=lambda n: {"n": n, "text": f"événement {n} ✓", "ok": n % 2 == 0},
        )

    def stored_ids(self, read_stored: Callable[[], list[dict[str, Any]]]) -> Counter[str]:
        """How many times each id is stored."""
        return Counter(str(record["id"]) for record in read_stored())

    def assert_stored(
        self, read_stored: Callable[[], list[dict[str, Any]]], events: Sequence[Event]
    ) -> None:
        counts = self.stored_ids(read_stored)
        missing = [event.id for event in events if event.id not in counts]
        assert not missing, f"{len(missing)} confirmed event(s) not stored: {missing[:3]}"
        if self.idempotent:
            repeated = {key: count for key, count in counts.items() if count > 1}
            assert not repeated, f"events stored more than once: {repeated}"

    # -- the contract ----------------------------------------------------------------------

    def test_declares_a_name_and_documented_options(self, make_sink: Callable[[], Sink]) -> None:
        """A sink names itself and documents every option it accepts."""
        sink = make_sink()
        assert isinstance(sink.name, str) and sink.name
        for option in type(sink).options:
            assert option.help, f"option {option.name!r} of sink {sink.name!r} has no help"

    def test_delivers_a_batch(self, make_sink: Callable[[], Sink], read_stored: Any) -> None:
        """Every event of a confirmed batch is stored."""
        batch = self.events()

        _send_batches(make_sink, batch)
        self.assert_stored(read_stored, batch)

    def test_delivers_successive_batches(
        self, make_sink: Callable[[], Sink], read_stored: Any
    ) -> None:
        """Several batches through one open sink are all stored."""
        batches = [self.events() for _ in range(3)]

        _send_batches(make_sink, *batches)
        self.assert_stored(read_stored, [event for batch in batches for event in batch])

    def test_data_survives_the_trip(self, make_sink: Callable[[], Sink], read_stored: Any) -> None:
        """Each stored record carries its event's data values."""
        batch = self.events()

        _send_batches(make_sink, batch)
        stored = {str(record["id"]): _data_of(record) for record in read_stored()}
        for event in batch:
            data = stored[event.id]
            for key, value in event.data.items():
                assert data.get(key) == value, f"event {event.id} field {key!r}: {data!r}"

    def test_same_batch_twice_is_stored_once(
        self, make_sink: Callable[[], Sink], read_stored: Any
    ) -> None:
        """A batch sent again (a retry after a lost confirmation) is not stored twice."""
        batch = self.events()

        _send_batches(make_sink, batch, batch)
        self.assert_stored(read_stored, batch)

    def test_overlapping_batches_store_each_event_once(
        self, make_sink: Callable[[], Sink], read_stored: Any
    ) -> None:
        """Batches sharing events (a split retry) store each event once."""
        events = self.events(self.batch_size * 2)
        middle = len(events) // 2

        _send_batches(make_sink, events[: middle + 2], events[middle - 2 :])
        self.assert_stored(read_stored, events)

    def test_redelivery_after_a_restart_is_stored_once(
        self, make_sink: Callable[[], Sink], read_stored: Any
    ) -> None:
        """A new sink instance (the next process) sending the same batch stores nothing new."""
        batch = self.events()

        for _ in range(2):  # a restart: a new sink object gets the same batch again
            _send_batches(make_sink, batch)
        self.assert_stored(read_stored, batch)

    def test_open_and_close_twice_are_safe(self, make_sink: Callable[[], Sink]) -> None:
        """close() after close(), and close() without open(), raise nothing."""

        async def scenario() -> None:
            never_opened = make_sink()
            await _close(never_opened)
            sink = make_sink()
            await _open(sink)
            await _send(sink, self.events())
            await _close(sink)
            await _close(sink)

        _run(scenario())

    def test_describe_and_repr_hide_secrets(self, make_sink: Callable[[], Sink]) -> None:
        """describe(), destination and repr() name the target but never a secret's value."""
        sink = make_sink()
        described = sink.describe()
        assert isinstance(described, str) and described
        destination = sink.destination  # the outbox key, shown by eventsink status
        assert isinstance(destination, str) and destination
        for secret in _secrets_of(sink):
            for text in (described, destination, repr(sink), str(sink.config)):
                assert secret not in text, "a secret option's value is shown"

    def test_failures_raise_delivery_errors(
        self,
        failure_cases: dict[str, tuple[Callable[[], Sink], type[BaseException]]],
    ) -> None:
        """Each failure case raises the expected eventsink error, with no secret in it."""
        if not failure_cases:
            pytest.skip("no 'failure_cases' fixture: error mapping not checked")
        for case, (make_failing, expected) in failure_cases.items():
            assert issubclass(expected, (DeliveryError, ConfigError)), (
                f"{case}: expected {expected.__name__}, not an eventsink error"
            )
            sink = make_failing()

            async def scenario(sink: Sink = sink) -> None:
                try:
                    await _open(sink)
                    await _send(sink, self.events(1))
                finally:
                    await _close(sink)

            with pytest.raises(expected) as caught:
                _run(scenario())
            for secret in _secrets_of(sink):
                assert secret not in str(caught.value), f"{case}: the error shows a secret"

    def sends_at_once(self, sink: Sink) -> int:
        """How many ``send`` calls the concurrent scenarios make at once for ``sink``."""
        declared = type(sink).max_concurrent_sends
        return self.unlimited_sends if declared is None else declared

    def test_declares_how_many_sends_it_accepts_at_once(
        self, make_sink: Callable[[], Sink]
    ) -> None:
        """``max_concurrent_sends`` is a positive int or ``None`` (any number)."""
        declared = type(make_sink()).max_concurrent_sends
        assert declared is None or (
            isinstance(declared, int) and not isinstance(declared, bool) and declared >= 1
        ), f"max_concurrent_sends must be a positive int or None, not {declared!r}"

    def test_a_local_sink_stores_each_id_once(self, make_sink: Callable[[], Sink]) -> None:
        """``local`` is a bool, and a sink that declares it is idempotent: ``eventsink send``
        relies on that to deliver a file's events again after a crash instead of keeping them
        in the outbox."""
        declared = type(make_sink()).local
        assert isinstance(declared, bool), f"local must be a bool, not {declared!r}"
        assert not (declared and not self.idempotent), (
            "a sink that stores an id more than once must not declare local = True"
        )

    def test_concurrent_sends_store_every_event(
        self, make_sink: Callable[[], Sink], read_stored: Any
    ) -> None:
        """As many batches as the sink accepts at once, sent together, are all stored."""
        sink = make_sink()
        at_once = self.sends_at_once(sink)
        batches = [self.events() for _ in range(max(2, at_once) * 2)]

        async def scenario() -> None:
            slots = asyncio.Semaphore(at_once)

            async def send(batch: Sequence[Event]) -> None:
                async with slots:
                    await _send(sink, batch)

            await _open(sink)
            try:
                await asyncio.gather(*(send(batch) for batch in batches))
            finally:
                await _close(sink)

        _run(scenario())
        self.assert_stored(read_stored, [event for batch in batches for event in batch])

    def test_pipeline_never_overlaps_more_sends_than_declared(
        self, make_sink: Callable[[], Sink], read_stored: Any
    ) -> None:
        """With ``concurrency`` above the sink's limit, ``send`` never overlaps beyond it."""
        sink = make_sink()
        limit = type(sink).max_concurrent_sends
        concurrency = (limit or self.unlimited_sends) + 3
        peak = _track_overlap(sink)
        count = self.batch_size * concurrency * 2
        ids = _run(_through_pipeline(sink, self.table, count, self.batch_size, concurrency))
        assert limit is None or peak() <= limit, (
            f"{peak()} sends overlapped; the sink accepts {limit} at once"
        )
        counts = self.stored_ids(read_stored)
        assert [event_id for event_id in ids if event_id not in counts] == []

    def test_delivers_through_a_pipeline(
        self, make_sink: Callable[[], Sink], read_stored: Any
    ) -> None:
        """Run by the real pipeline, in several batches, every written event is stored."""
        sink = make_sink()
        batch_limit = self.batch_size
        ids = _run(_through_pipeline(sink, self.table, batch_limit * 3 + 1, batch_limit, 1))
        counts = self.stored_ids(read_stored)
        assert [event_id for event_id in ids if event_id not in counts] == []


async def _through_pipeline(
    sink: Sink, table: str, count: int, batch_limit: int, concurrency: int
) -> list[str]:
    """Write ``count`` events through a real pipeline into ``sink``; return their ids."""
    settings = Settings(
        instance="contract",
        sinks=(
            SinkConfig(
                type=sink.name,
                name="contract",
                options={},
                delivery=DeliverySettings(
                    batch_limit=batch_limit, flush_interval=0.01, concurrency=concurrency
                ),
            ),
        ),
    )
    pipeline = Pipeline(
        settings,
        pm=make_plugin_manager(entry_points=False),
        outbox=MemoryOutbox(),
        sinks={"contract": sink},
    )
    await pipeline.start()
    ids = []
    for number in range(count):
        event_id = await pipeline.write_async(table, {"n": number})
        assert event_id is not None
        ids.append(event_id)
    delivered = await pipeline.flush(timeout=30)
    left = await pipeline.close(timeout=5)
    assert delivered and left == 0, "the pipeline could not deliver everything"
    return ids


def _track_overlap(sink: Sink) -> Callable[[], int]:
    """Wrap ``sink.send`` to record the most calls in progress at once; return a reader."""
    send = sink.send
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def enter() -> None:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])

    def leave() -> None:
        with lock:
            state["now"] -= 1

    if inspect.iscoroutinefunction(send):

        async def tracked(batch: Sequence[Event]) -> None:
            enter()
            try:
                await asyncio.sleep(0.001)  # leave room for an overlapping call to start
                await send(batch)
            finally:
                leave()

    else:

        def tracked(batch: Sequence[Event]) -> None:  # type: ignore[misc]
            enter()
            try:
                send(batch)
            finally:
                leave()

    sink.send = tracked  # type: ignore[method-assign]
    return lambda: state["peak"]
