"""How the ``s3`` sink turns events into object bodies: JSON lines (gzip) or Parquet.

Both formats store the flat row of each event (``Event.row()``: ``id``, ``instance``,
``created`` and the data's keys as columns); the table is part of the object's key. Parquet
columns are typed from the values: a table's schema is remembered and widened as new keys and
types appear (an int column that meets a float becomes a double, any other clash a string), and
nested values (objects, lists) are stored as JSON text.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from typing import Any

import orjson

from eventsink.event import Event

ENVELOPE_COLUMNS = ("id", "instance", "created")

# Column kinds, in the order a clash widens them: any two different kinds other than
# int/float meet at "string".
_INT64 = (-(2**63), 2**63 - 1)


def jsonl_body(events: Sequence[Event], compression: str) -> bytes:
    """One JSON object per line; gzip'd (with a fixed mtime, so a retry writes the same bytes)."""
    body = b"".join(event.row_json() + b"\n" for event in events)
    if compression == "gzip":
        return gzip.compress(body, compresslevel=6, mtime=0)
    return body


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "json"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "json"


def _widen(known: str | None, seen: str | None) -> str | None:
    if known is None or known == seen:
        return seen if known is None else known
    if seen is None:
        return known
    if {known, seen} == {"int", "float"}:
        return "float"
    return "string"


class ParquetEncoder:
    """Encode events as Parquet, keeping one widening schema per table.

    The schema lives as long as the sink: after a restart the first objects may have fewer
    columns than earlier ones, which readers merge by name (DuckDB ``union_by_name=true``).
    """

    def __init__(self, compression: str) -> None:
        import pyarrow  # noqa: F401  # fail at start, not at the first batch

        self.compression = compression
        self.schemas: dict[str, dict[str, str | None]] = {}

    def body(self, table: str, events: Sequence[Event]) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self.schemas.setdefault(table, {name: "string" for name in ENVELOPE_COLUMNS})
        columns: dict[str, list[Any]] = {name: [] for name in schema}
        for position, event in enumerate(events):
            columns["id"].append(event.id)
            columns["instance"].append(event.instance)
            columns["created"].append(event.created)
            for key, value in event.data.items():
                column = columns.get(key)
                if column is None:  # a new key: earlier rows had no value for it
                    column = columns[key] = [None] * position
                    schema.setdefault(key, None)
                column.append(value)
            for column in columns.values():
                if len(column) <= position:
                    column.append(None)
        arrays = {}
        for name, values in columns.items():
            kind = schema[name]
            for value in values:
                kind = _widen(kind, _kind(value))
            schema[name] = kind
            arrays[name] = _array(pa, kind, values)
        buffer = io.BytesIO()
        pq.write_table(
            pa.table(arrays),
            buffer,
            compression=None if self.compression == "none" else self.compression,
        )
        return buffer.getvalue()


def _array(pa: Any, kind: str | None, values: list[Any]) -> Any:
    if kind is None:
        return pa.nulls(len(values), pa.string())
    if kind == "json":
        return pa.array(
            [None if v is None else orjson.dumps(v).decode() for v in values], pa.string()
        )
    if kind == "string":
        return pa.array(
            [v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in values],
            pa.string(),
        )
    if kind == "float":
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array(values, {"int": pa.int64(), "bool": pa.bool_()}[kind])
