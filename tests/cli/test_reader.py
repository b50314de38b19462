"""The input reader keeps integers exact and names what it refuses."""

from __future__ import annotations

import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from eventsink.cli.reader import Malformed, Record, read_records


def _read(text: bytes, fmt: str = "jsonl") -> list[Record | Malformed]:
    return list(read_records(io.BytesIO(text), "input", fmt))


class TestExactIntegers:
    """A JSON integer is never silently rounded to a float."""

    def test_integer_beyond_64_bits_is_refused_naming_the_field(self):
        items = _read(b'{"a": 1}\n{"order": {"ids": [1, 12345678901234567890123]}}\n{"b": 2}\n')
        assert [type(item) for item in items] == [Record, Malformed, Record]
        assert items[1].where == "line 2"
        assert "'order.ids[1]'" in items[1].reason
        assert "64-bit" in items[1].reason

    def test_unsigned_64_bit_integer_is_refused(self):
        (item,) = _read(b'{"u": 18446744073709551615}\n')
        assert isinstance(item, Malformed)
        assert "'u'" in item.reason

    def test_largest_signed_integer_is_kept_exactly(self):
        (item,) = _read(b'{"n": 9223372036854775807, "m": -9223372036854775808}\n')
        assert isinstance(item, Record)
        assert item.data == {"n": 2**63 - 1, "m": -(2**63)}

    def test_long_digits_inside_a_string_stay_text(self):
        (item,) = _read(b'{"card": "123456789012345678901234567890", "x": 1.5}\n')
        assert isinstance(item, Record)
        assert item.data == {"card": "123456789012345678901234567890", "x": 1.5}

    def test_json_array_with_a_big_integer(self):
        items = _read(b'[{"a": 1}, {"a": 100000000000000000000000}]', "json")
        assert isinstance(items[0], Record)
        assert isinstance(items[1], Malformed)
        assert items[1].where == "item 2"
        assert "'a'" in items[1].reason

    def test_nan_in_a_long_line_is_still_not_json(self):
        (item,) = _read(b'{"a": 123456789012345678901234, "b": NaN}\n')
        assert isinstance(item, Malformed)
        assert "not JSON" in item.reason

    def test_lone_surrogate_escape_is_not_json(self):
        (item,) = _read(b'{"s": "\\ud800"}\n')
        assert isinstance(item, Malformed)
        assert "not JSON" in item.reason


flat_values = st.one_of(
    st.integers(),  # any size: beyond 64 bits must be refused, never rounded
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.booleans(),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), flat_values, max_size=6))
def test_a_flat_line_is_kept_exactly_or_refused_naming_the_field(data):
    line = json.dumps(data).encode() + b"\n"
    (item,) = _read(line)
    too_big = [
        key for key, value in data.items() if type(value) is int and not -(2**63) <= value < 2**63
    ]
    if too_big:
        assert isinstance(item, Malformed) and "64-bit" in item.reason
        assert repr(too_big[0]) in item.reason
    elif "data" in data:
        return  # may be read as an envelope: its own tests
    else:
        assert isinstance(item, Record) and item.data == data
        assert [type(value) for value in item.data.values()] == [type(v) for v in data.values()]


def test_just_below_the_signed_range_is_refused_not_rounded():
    """19 digits, below -2**63: orjson makes it a float; found by the property above."""
    (item,) = _read(b'{"n": -9223372036854775809}\n')
    assert isinstance(item, Malformed) and "'n'" in item.reason
