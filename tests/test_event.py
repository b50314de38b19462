"""The event envelope, the JSON-safety rule and monotonic ULIDs."""

from __future__ import annotations

import datetime as dt
import enum
import os
import threading
import uuid
from decimal import Decimal

import orjson
import pytest
from ulid import ULID

from eventsink import ids as ids_module
from eventsink.event import MAX_DEPTH, Event, normalise
from eventsink.exceptions import EventError
from eventsink.ids import IdGenerator, format_created, parse_ulid_or_time, ulid_floor


class Colour(enum.Enum):
    RED = "red"


class TestNormalise:
    """normalise() converts what JSON cannot hold by the documented rule, or names the field."""

    def test_plain_values_are_copied(self):
        data = {"a": 1, "b": "x", "c": None, "d": True, "e": 1.5}
        result = normalise(data)
        assert result == data
        assert result is not data

    def test_documented_conversions(self):
        moment = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
        ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
        result = normalise(
            {
                "when": moment,
                "day": dt.date(2026, 1, 2),
                "price": Decimal("10.10"),
                "uuid": ident,
                "blob": b"\x00\x01",
                "tags": {"b", "a"},
                "pair": (1, 2),
                "colour": Colour.RED,
                "nested": {"inner": [moment]},
            }
        )
        assert result == {
            "when": "2026-01-02T03:04:05+00:00",
            "day": "2026-01-02",
            "price": "10.10",
            "uuid": str(ident),
            "blob": "AAE=",
            "tags": ["a", "b"],
            "pair": [1, 2],
            "colour": "red",
            "nested": {"inner": ["2026-01-02T03:04:05+00:00"]},
        }
        orjson.dumps(result)  # and it is JSON-safe

    def test_unsupported_value_names_the_nested_field(self):
        with pytest.raises(EventError) as info:
            normalise({"user": {"tags": ["ok", object()]}})
        assert info.value.field == "user.tags[1]"
        assert "user.tags[1]" in str(info.value)

    @pytest.mark.parametrize("key", ["id", "instance", "created"])
    def test_reserved_keys_are_an_error(self, key):
        with pytest.raises(EventError, match=repr(key)) as info:
            normalise({key: "x"})
        assert info.value.field == key

    def test_non_finite_floats_are_rejected(self):
        with pytest.raises(EventError, match="score"):
            normalise({"score": float("nan")})

    def test_non_dict_data_is_rejected(self):
        with pytest.raises(EventError, match="must be a dict"):
            normalise(["not", "a", "dict"])


class TestValidateAtTheDoor:
    """normalise() refuses what the outbox or a sink could not store exactly, naming the field."""

    @pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70])
    def test_integers_outside_64_bits(self, value):
        with pytest.raises(EventError, match="64-bit") as info:
            normalise({"user": {"count": value}})
        assert info.value.field == "user.count"

    @pytest.mark.parametrize("value", [2**63 - 1, -(2**63)])
    def test_integers_at_the_64_bit_edges_are_kept(self, value):
        assert normalise({"n": value}) == {"n": value}
        assert orjson.loads(orjson.dumps(normalise({"n": value}))) == {"n": value}

    def test_lone_surrogate_in_a_value(self):
        with pytest.raises(EventError, match="U\\+D800") as info:
            normalise({"name": "ok\ud800"})
        assert info.value.field == "name"

    def test_lone_surrogate_in_a_nested_value_and_key(self):
        with pytest.raises(EventError, match="not valid Unicode") as info:
            normalise({"tags": ["a", "\udfff"]})
        assert info.value.field == "tags[1]"
        with pytest.raises(EventError, match="not valid Unicode"):
            normalise({"\udfff": 1})
        with pytest.raises(EventError, match="not valid Unicode"):
            normalise({"outer": {"\udfff": 1}})

    def test_valid_non_ascii_text_is_kept(self):
        data = {"name": "Zoë 🐍", "nested": {"ключ": "значение"}}
        assert normalise(data) == data

    def test_nesting_at_the_limit_is_kept_and_beyond_refused(self):
        ok: list = []
        for _ in range(MAX_DEPTH - 1):
            ok = [ok]
        assert normalise({"deep": ok}) == {"deep": ok}
        orjson.dumps(Event("x", "t", "i", "c", normalise({"deep": ok})).to_dict())
        with pytest.raises(EventError, match=f"more than {MAX_DEPTH} deep") as info:
            normalise({"deep": [ok]})
        assert info.value.field.startswith("deep[0]")

    def test_very_deep_nesting_is_an_event_error_not_recursion(self):
        deep: dict = {}
        for _ in range(5000):
            deep = {"x": deep}
        with pytest.raises(EventError, match="deep"):
            normalise({"deep": deep})

    def test_keys_differing_only_in_case_are_refused(self):
        with pytest.raises(EventError, match="differ only in case") as info:
            normalise({"A": 1, "a": 2})
        assert info.value.field == "a"
        assert normalise({"outer": {"A": 1, "a": 2}}) == {"outer": {"A": 1, "a": 2}}

    def test_nul_in_a_top_level_key_is_refused(self):
        with pytest.raises(EventError, match="NUL") as info:
            normalise({"a\x00b": 1})
        assert info.value.field == "a\x00b"

    @pytest.mark.parametrize("key", ["ID", "Instance", "CREATED"])
    def test_reserved_keys_in_any_case(self, key):
        with pytest.raises(EventError, match="reserved") as info:
            normalise({key: "spoof"})
        assert info.value.field == key

    def test_non_finite_nested_float(self):
        with pytest.raises(EventError) as info:
            normalise({"m": [1.0, float("inf")]})
        assert info.value.field == "m[1]"


class TestEvent:
    """Events serialise to rows and JSON lines consistently."""

    def test_row_and_json_agree(self):
        event = Event("01J0", "t", "web-1", "2026-01-01T00:00:00.000+00:00", {"a": 1})
        assert event.row() == {
            "id": "01J0",
            "instance": "web-1",
            "created": "2026-01-01T00:00:00.000+00:00",
            "a": 1,
        }
        assert orjson.loads(event.row_json()) == event.row()
        assert orjson.loads(event.to_json()) == event.to_dict()

    def test_empty_data_row_json(self):
        event = Event("01J0", "t", "i", "c", {})
        assert orjson.loads(event.row_json()) == {"id": "01J0", "instance": "i", "created": "c"}

    def test_lazy_data_from_json(self):
        event = Event("01J0", "t", "i", "c", data_json=b'{"a":[1,2]}')
        assert event.data == {"a": [1, 2]}


class TestIds:
    """Generated ids are valid ULIDs, strictly increasing, and match their created time."""

    def test_valid_and_increasing(self):
        generator = IdGenerator()
        pairs = [generator.new() for _ in range(20_000)]
        ids = [event_id for event_id, _ in pairs]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        for event_id, created in pairs[::997]:
            parsed = ULID.from_str(event_id)
            assert parsed.datetime.isoformat(timespec="milliseconds") == created

    def test_increasing_per_thread_with_many_threads(self):
        generator = IdGenerator()
        results: dict[int, list[str]] = {}

        def work(number: int) -> None:
            results[number] = [generator.new()[0] for _ in range(5000)]

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        every = [event_id for ids in results.values() for event_id in ids]
        assert len(set(every)) == 20_000
        for ids in results.values():
            assert ids == sorted(ids)

    @pytest.mark.parametrize(
        "low",
        [(1 << 20) - 3, (1 << 30) - 3, (1 << 40) - 3, (1 << 50) - 3],
        ids=["carry into the head", "carry further", "carry further still", "overflow"],
    )
    def test_increasing_across_carries(self, low, monkeypatch):
        """Most ids re-encode only their last four characters; a carry past them, or past
        all 50 incremented bits, still gives the full id, valid and increasing."""
        generator = IdGenerator()
        first, created = generator.new()
        frozen = ULID.from_str(first).timestamp  # seconds: the same millisecond from now on
        monkeypatch.setattr("eventsink.ids.time.time_ns", lambda: int(frozen * 1000) * 10**6)
        generator._low = low
        generator._head = generator._prefix + ids_module.encode(low >> 20, 6)
        made = [generator.new() for _ in range(6)]
        ids = [event_id for event_id, _ in made]
        assert ids == sorted(set(ids))
        for event_id, when in made:
            parsed = ULID.from_str(event_id)
            assert parsed.datetime.isoformat(timespec="milliseconds") == when
            low_bits = int.from_bytes(parsed.bytes, "big") & ((1 << 50) - 1)
            if low < (1 << 50) - 6:
                assert when == created
                assert low_bits == generator._low - (5 - made.index((event_id, when)))

    def test_created_matches_the_time_across_seconds(self):
        generator = IdGenerator()
        for ms in (1_733_570_000_999, 1_733_570_001_000, 1_733_570_001_001, 1_767_225_599_999):
            generator._reseed(ms)
            assert generator._created == format_created(ms)

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_a_forked_child_draws_random_bits_of_its_own(self):
        # The generator draws random bytes from the OS in advance; a child forked from the
        # parent must not reuse them, or parent and child make the same id in the same ms.
        generator = IdGenerator()
        generator.new()  # the pool is drawn
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its next seeds must not be the parent's
            os.close(read)
            os.write(write, str(generator._random_bits()).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        child = int(os.read(read, 100))
        os.close(read)
        assert child != generator._random_bits()

    def test_parse_ulid_or_time(self):
        moment = dt.datetime(2026, 1, 31, 12, tzinfo=dt.timezone.utc)
        assert parse_ulid_or_time("2026-01-31T12:00:00Z") == ulid_floor(moment)
        some = str(ULID())
        assert parse_ulid_or_time(some.lower()) == some
        with pytest.raises(ValueError, match="neither a ULID"):
            parse_ulid_or_time("yesterday")


def test_data_json_keeps_no_more_memory_than_its_length():
    """orjson's result keeps its 4 KB write buffer; a held event keeps an exact copy."""
    import tracemalloc

    events = [Event(f"{n:026d}", "t", "i", "c", {"path": "/db/table", "n": n}) for n in range(1000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for event in events:
            event.data_json()
        per_event = (tracemalloc.get_traced_memory()[0] - before) / len(events)
    finally:
        tracemalloc.stop()
    assert per_event < 200
    assert orjson.loads(events[7].data_json()) == {"path": "/db/table", "n": 7}
