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


def _kind(values: list[Any]) -> str | None:
    """The narrowest kind that holds every value of a column (``None``: all null)."""
    types = set(map(type, values))
    types.discard(type(None))
    if not types:
        return None
    if types == {bool}:
        return "bool"
    if types == {int}:
        numbers = [value for value in values if value is not None]
        return "int" if _INT64[0] <= min(numbers) and max(numbers) <= _INT64[1] else "json"
    if types <= {int, float}:
        return "float"
    if types == {str}:
        return "string"
    if types <= {dict, list}:
        return "json"
    return "string"


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
        arrays = {
            "id": pa.array([event.id for event in events], pa.string()),
            "instance": pa.array([event.instance for event in events], pa.string()),
            "created": pa.array([event.created for event in events], pa.string()),
        }
        datas = [event.data for event in events]
        for key in dict.fromkeys(key for data in datas for key in data):
            schema.setdefault(key, None)
        for name, known in schema.items():
            if name in arrays:
                continue
            values = [data.get(name) for data in datas]
            kind = schema[name] = _widen(known, _kind(values))
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
