"""Poison values: each is refused at write() naming the field, or delivered intact, and the
canary written after it is always delivered, to every built-in sink.

A hypothesis property test feeds random JSON-ish values (huge integers, lone surrogates, deep
nesting, NaN and infinities, keys equal but for case, envelope keys) through ``Client.write``
to the file, sqlite, datasette (a real receiver) and null sinks; the issue's own poison values
go through ``eventsink send`` too.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eventsink
from eventsink.event import normalise

from .conftest import table_rows

EVENTSINK = str(Path(sys.executable).with_name("eventsink"))
_counter = itertools.count()


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.text(st.characters() | surrogates, max_size=8)  # characters(): no surrogates
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 2)
    | st.integers(min_value=2**63 - 2, max_value=2**63 + 2)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=10,
) | st.integers(min_value=60, max_value=70).map(deep)
keys = st.sampled_from(["a", "A", "id", "ID", "Instance", "created", "name", "Name"]) | texts
event_data = st.dictionaries(keys, values, max_size=4)


def _sqlite_value(value: Any) -> Any:
    """What a SQL row holds for ``value``: JSON text for lists and objects, 0/1 for booleans."""
    if isinstance(value, (dict, list)):
        return orjson.loads(orjson.dumps(value))  # compared after decoding the stored text
    if isinstance(value, bool):
        return int(value)
    return value


def _same(stored: Any, expected: Any) -> bool:
    if isinstance(expected, float) and isinstance(stored, (int, float)):
        return stored == expected or (math.isnan(stored) and math.isnan(expected))
    return stored == expected


class Delivery:
    """One Client per sink, and how to read back what the sink stored."""

    def __init__(self, kind: str, directory: Path, receiver: Any) -> None:
        self.kind = kind
        self.directory = directory
        self.receiver = receiver
        options: dict[str, Any] = {"outbox": str(directory / f"{kind}-outbox.db")}
        if kind == "file":
            options.update(sink="file", path=str(directory / "events.jsonl"), fsync=False)
        elif kind == "sqlite":
            options.update(sink="sqlite", path=str(directory / "events.db"))
        elif kind == "datasette":
            options.update(
                sink="datasette",
                api_url=f"{receiver.db_url}/-/create",
                api_token=receiver.token,
                alter=True,  # the canary's column joins a table the value's event made
            )
        else:
            options.update(sink="null")
        self.client = eventsink.Client(handle_sigterm=False, **options)

    def stored(self, table: str, event_id: str) -> dict[str, Any] | None:
        """The data of ``event_id`` as the sink stored it (``None``: not there)."""
        if self.kind == "file":
            for line in (self.directory / "events.jsonl").read_text().split("\n")[:-1]:
                record = json.loads(line)
                if record["id"] == event_id:
                    return record["data"]
            return None
        if self.kind in ("sqlite", "datasette"):
            rows = (
                table_rows(self.directory / "events.db", table)
                if self.kind == "sqlite"
                else self.receiver.rows(table)
            )
            for row in rows:
                if row["id"] == event_id:
                    return {k: v for k, v in row.items() if k not in ("id", "instance", "created")}
            return None
        return {}  # null: delivered means counted

    def check_intact(self, table: str, event_id: str, data: dict[str, Any]) -> None:
        stored = self.stored(table, event_id)
        assert stored is not None, f"{event_id} was not delivered to {self.kind}"
        if self.kind in ("file",):
            assert stored == data
        elif self.kind in ("sqlite", "datasette"):
            for key, value in data.items():
                held = stored[key]
                if isinstance(value, (dict, list)):
                    held = json.loads(held)
                assert _same(held, _sqlite_value(value)), (key, held, value)


@pytest.fixture(scope="module")
def deliveries(tmp_path_factory, receiver):
    made = {
        kind: Delivery(kind, tmp_path_factory.mktemp(kind), receiver)
        for kind in ("file", "sqlite", "datasette", "null")
    }
    yield made
    for delivery in made.values():
        delivery.client.close(timeout=5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "sqlite", "datasette", "null"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=event_data)
def test_refused_naming_the_field_or_delivered_intact(deliveries, kind, data):
    delivery = deliveries[kind]
    client = delivery.client
    table = f"p{next(_counter)}_{uuid.uuid4().hex[:6]}"  # one table per example: fresh columns
    try:
        event_id = client.write(table, data)
    except eventsink.EventError as error:
        assert error.field is not None
        message = str(error)
        assert any(form in message for form in (error.field, repr(error.field)[1:-1])), message
        event_id = None
    canary = client.write(table, {"canary": True})
    assert client.flush(30)
    if event_id is not None:
        delivery.check_intact(table, event_id, normalise(data))
    assert delivery.stored(table, canary) is not None, "the canary was not delivered"
    assert client.status()["dropped"] == {}


POISON_LINES = [
    (b'{"huge": 1180591620717411303424}', "huge"),  # 2**70
    (b'{"text": "\\ud800"}', None),  # not JSON to orjson: the line is set aside
    (b'{"deep": ' + b"[" * 300 + b"]" * 300 + b"}", "deep"),
    (b'{"digits": 12345678901234567890123}', "digits"),
    (b'{"A": 1, "a": 2}', "a"),
    (b'{"ID": "spoof"}', "ID"),
]


class TestSendPoison:
    """``eventsink send``: each poison line is reported naming the field, the canaries arrive."""

    @pytest.mark.slow
    @pytest.mark.parametrize("sink", ["sqlite", "file", "datasette"])
    def test_poison_lines_then_canaries(self, tmp_path, receiver, sink):
        lines = []
        for number, (line, _) in enumerate(POISON_LINES):
            lines += [line, orjson.dumps({"canary": number})]
        table = f"send_{uuid.uuid4().hex[:8]}"
        args = [EVENTSINK, "send", "--table", table, "--outbox", str(tmp_path / "o.db"), "-"]
        if sink == "sqlite":
            args += ["--sink", "sqlite", "-o", f"path={tmp_path / 'e.db'}"]
        elif sink == "file":
            args += ["--sink", "file", "-o", f"path={tmp_path / 'e.jsonl'}"]
        else:
            args += [
                "--sink",
                "datasette",
                "-o",
                f"api_url={receiver.db_url}/-/create",
                "-o",
                f"api_token={receiver.token}",
            ]
        result = subprocess.run(
            args, input=b"\n".join(lines) + b"\n", capture_output=True, timeout=120
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        assert result.returncode == 3, output  # some input malformed, the rest delivered
        for number, (_, field) in enumerate(POISON_LINES):
            assert f"line {2 * number + 1}" in output, output
            if field is not None:
                assert f"'{field}" in output, (field, output)
        if sink == "sqlite":
            canaries = [row["canary"] for row in table_rows(tmp_path / "e.db", table)]
        elif sink == "file":
            canaries = [
                json.loads(line)["data"]["canary"]
                for line in (tmp_path / "e.jsonl").read_text().splitlines()
            ]
        else:
            canaries = [row["canary"] for row in receiver.rows(table)]
        assert sorted(canaries) == list(range(len(POISON_LINES)))
