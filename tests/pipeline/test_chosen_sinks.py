"""Events written for only some of a pipeline's sinks (``write(..., sinks=[...])``).

The Datasette plugin's per-database ``sinks`` rides on this: each event is stored once for
each sink it goes to, and only for those, through every outbox, a restart and the counts that
``flush()`` and ``max_events`` rely on.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventsink.config import parse_config
from eventsink.exceptions import EventError
from eventsink.outbox import MemoryOutbox
from eventsink.outbox.sqlite import SQLiteOutbox
from eventsink.pipeline.pipeline import Pipeline
from eventsink.plugins import lookup, sink_classes
from eventsink.testing import plugin_manager

NAMES = ("a", "b", "c")


def make_pipeline(outbox, **config) -> Pipeline:
    pm = plugin_manager()
    settings = parse_config(
        {
            "sinks": [{"type": "memory", "name": name} for name in NAMES],
            "instance": "t",
            "flush_interval": 0.01,
            **config,
        },
        lambda name, key: lookup(sink_classes(pm), name, "sink", key).options,
    )
    return Pipeline(settings, pm=pm, outbox=outbox)


def delivered(pipeline: Pipeline) -> dict[str, list[int]]:
    return {
        name: sorted(event.data["n"] for event in sink.events)
        for name, sink in pipeline.sinks.items()
    }


def outboxes(tmp_path):
    sqlite = SQLiteOutbox(tmp_path / "outbox.db")
    read_back = SQLiteOutbox(tmp_path / "read-back.db")
    read_back.held_in_memory = 0  # every event is read back from the table
    return {"memory": MemoryOutbox(), "sqlite": sqlite, "read_back": read_back}


@pytest.mark.parametrize("kind", ["memory", "sqlite", "read_back"])
async def test_each_sink_gets_exactly_the_events_written_for_it(tmp_path, kind):
    pipeline = make_pipeline(outboxes(tmp_path)[kind])
    await pipeline.start()
    chosen = [None, ["a"], ["b", "c"], ("a", "b", "c"), {"c"}]
    for n in range(500):
        await pipeline.write_async(
            "t", {"n": n}, sinks=chosen[n % len(chosen)], wait_committed=False
        )
    assert await pipeline.flush(timeout=30)
    expected = {
        name: [n for n in range(500) if chosen[n % 5] is None or name in chosen[n % 5]]
        for name in NAMES
    }
    assert delivered(pipeline) == expected
    assert pipeline.capacity.rows == 0  # every copy was counted and given back
    await pipeline.close()


@settings(max_examples=25, deadline=None)
@given(
    choices=st.lists(
        st.one_of(st.none(), st.sets(st.sampled_from(NAMES), min_size=1)), min_size=1, max_size=60
    )
)
def test_any_mix_of_chosen_sinks_is_delivered_once_each(choices):
    import asyncio

    async def run() -> None:
        pipeline = make_pipeline(MemoryOutbox(), batch_limit=7)
        await pipeline.start()
        for n, sinks in enumerate(choices):
            await pipeline.write_async("t", {"n": n}, sinks=sinks, wait_committed=False)
        assert await pipeline.flush(timeout=30)
        for name, sink in pipeline.sinks.items():
            assert [event.data["n"] for event in sink.events] == [
                n for n, sinks in enumerate(choices) if sinks is None or name in sinks
            ]
        await pipeline.close()

    asyncio.run(run())


async def test_pending_events_wait_for_their_own_sink_across_a_restart(tmp_path):
    """Closed with everything pending: the next start delivers each event to its sinks only."""
    first = make_pipeline(SQLiteOutbox(tmp_path / "outbox.db"), max_rate=1, time_period=3600)
    await first.start()
    for n in range(30):
        await first.write_async("t", {"n": n}, sinks=[NAMES[n % 3]])
    await first.close(timeout=0.1)
    again = make_pipeline(SQLiteOutbox(tmp_path / "outbox.db"))
    await again.start()
    assert await again.flush(timeout=30)
    shown = delivered(first)
    for name, numbers in delivered(again).items():
        shown[name] = sorted({*shown[name], *numbers})
    assert shown == {name: list(range(index, 30, 3)) for index, name in enumerate(NAMES)}
    await again.close()


async def test_max_events_counts_one_row_per_chosen_sink():
    pipeline = make_pipeline(MemoryOutbox(), max_events=6, overflow="drop_newest")
    # Not started: nothing is delivered, so what fits is what max_events allows.
    for n in range(6):
        pipeline.write("t", {"n": n}, sinks=["a"])  # one row each
    assert pipeline.capacity.rows == 6
    with pytest.raises(Exception, match="maximum of 6"):
        pipeline.write("t", {"n": 6}, sinks=["b"])
    await pipeline.close()


async def test_unknown_or_no_sink_is_refused_at_write_naming_it():
    pipeline = make_pipeline(MemoryOutbox())
    with pytest.raises(EventError, match=r"'nope'.*'a', 'b', 'c'"):
        pipeline.write("t", {"n": 1}, sinks=["a", "nope"])
    with pytest.raises(EventError, match="no sink"):
        await pipeline.write_async("t", {"n": 1}, sinks=[])
    assert pipeline.intake.accepted == 0
    await pipeline.close()
