"""Reading events from files for ``eventsink send``: JSON lines, a JSON array, or CSV.

:func:`read_records` yields a :class:`Record` per event and a :class:`Malformed` per input it
cannot use, each with where it was found (``line 12``, ``item 3``), so one bad line is reported
and set aside while the rest is delivered.

:class:`StableIds` gives the events of a regular file ids that are the same each time the
unchanged file is read, so sending it again after an interrupted run stores no duplicate: the
sinks write by id and ignore the ones they already have.

A JSON object shaped like eventsink's own envelope (``{"id", "table", "instance", "created",
"data"}``, as the ``file`` sink writes it) keeps its id, creation time and table, so a file
written by the ``file`` sink can be sent again and lands idempotently.

Integers are kept exact: a JSON integer too long for 64 bits (which a fast parser would turn
into a rounded float) is read exactly, and the line is then refused naming the field (the
outbox and the sinks store integers in 64 bits; quote such a number to keep it as text).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from ..event import INT_MAX, INT_MIN
from ..ids import PAIRS, encode

FORMATS = ("auto", "jsonl", "json", "csv")
_ENVELOPE_KEYS = frozenset({"id", "table", "instance", "created", "data"})
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+([eE][-+]?[0-9]+)?")
# 19 digits in a row may be an integer beyond 64 bits, which orjson reads as a rounded float
# (-9223372036854775809 has 19: below the signed range, and no unsigned one can hold it).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


@dataclass
class Record:
    """One event read from the input."""

    data: dict[str, Any]
    where: str
    table: str | None = None
    event_id: str | None = None
    created: str | None = None
    raw: bytes = b""  # the input line, when the format has lines (for the rejects file)


@dataclass
class Malformed:
    """An input line or item that is not an event, with why."""

    source: str
    where: str
    reason: str
    text: bytes = b""


class StableIds:
    """ULIDs for the records of one file, the same every time the unchanged file is read.

    The timestamp is the file's modification time; the random part is a hash of the file's
    identity (device, inode, size, modification time: a changed or replaced file gets new
    ids) followed by the record's position, so ids sort in file order.
    """

    def __init__(self, identity: os.stat_result) -> None:
        key = f"{identity.st_dev}:{identity.st_ino}:{identity.st_size}:{identity.st_mtime_ns}"
        high = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") >> 2
        self._prefix = encode(identity.st_mtime_ns // 1_000_000, 10) + encode(high, 6)

    @classmethod
    def of(cls, stream: BinaryIO) -> StableIds | None:
        """Ids for ``stream`` if it is a regular file; ``None`` for a pipe or a terminal."""
        try:
            identity = os.fstat(stream.fileno())
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None
        return cls(identity) if stat.S_ISREG(identity.st_mode) else None

    def __call__(self, position: int) -> str:
        """The id of the record at ``position`` (0 for the first) in the file."""
        low, pairs = position & ((1 << 50) - 1), PAIRS
        return (
            self._prefix
            + pairs[low >> 40]
            + pairs[(low >> 30) & 1023]
            + pairs[(low >> 20) & 1023]
            + pairs[(low >> 10) & 1023]
            + pairs[low & 1023]
        )


def detect_format(name: str, head: bytes) -> str:
    """The format of a file from its name, else from its first non-blank byte."""
    lowered = name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    first = head.lstrip(codecs.BOM_UTF8 + b" \t\r\n")[:1]
    if first == b"[":
        return "json"
    if first == b"{" or not first:
        return "jsonl"
    return "csv"


def read_records(
    stream: BinaryIO, source: str, fmt: str = "auto", *, detect_types: bool = True
) -> Iterator[Record | Malformed]:
    """Every event in ``stream`` (named ``source`` in messages), in input order."""
    if fmt == "auto":
        buffered = stream if hasattr(stream, "peek") else io.BufferedReader(stream)  # type: ignore[arg-type]
        fmt = detect_format(source, buffered.peek(4096)[:4096])  # type: ignore[union-attr]
        stream = buffered  # type: ignore[assignment]
    if fmt == "jsonl":
        return _json_lines(stream, source)
    if fmt == "json":
        return _json_array(stream, source)
    if fmt == "csv":
        return _csv(stream, source, detect_types)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _record(value: Any, source: str, where: str, raw: bytes) -> Record | Malformed:
    if not isinstance(value, dict):
        return Malformed(source, where, f"a JSON {type(value).__name__}, not an object", raw)
    if (
        "data" in value
        and "id" in value
        and "created" in value
        and isinstance(value["data"], dict)
        and _ENVELOPE_KEYS.issuperset(value)
    ):
        return Record(
            value["data"],
            where,
            table=value.get("table"),
            event_id=str(value["id"]),
            created=str(value["created"]),
        )
    return Record(value, where)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads_exact(text: bytes) -> Any:
    """Parse ``text`` keeping every digit of long integers (orjson rounds them to floats)."""
    if not _LONG_DIGITS.search(text):
        return orjson.loads(text)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise orjson.JSONDecodeError(str(error), "", 0) from None


_EXACT_FLAT = frozenset({str, bool, type(None)})


def _flat(value: dict[str, Any]) -> bool | None:
    """``True`` when ``value`` holds only strings, booleans, nulls and 64-bit integers;
    ``False`` when it also holds floats (which orjson makes of integers beyond 64 bits);
    ``None`` for anything else (nested values, an integer beyond 64 bits)."""
    exact = True
    for item in value.values():
        kind = type(item)
        if kind is int:
            if not INT_MIN <= item <= INT_MAX:
                return None
        elif kind is float:
            exact = False
        elif kind not in _EXACT_FLAT:
            return None
    return exact


def _big_integer(value: Any, path: str = "") -> str | None:
    """The path of the first integer outside 64 bits in ``value``, or ``None``."""
    if type(value) is int:
        return path if not INT_MIN <= value <= INT_MAX else None
    if isinstance(value, dict):
        items: Any = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for where, item in items:
        found = _big_integer(item, where)
        if found is not None:
            return found
    return None


def _too_big(source: str, where: str, field: str, raw: bytes) -> Malformed:
    return Malformed(
        source,
        where,
        f"field {field!r}: the integer is outside the 64-bit range sinks store exactly; "
        "quote it in the input to keep every digit",
        raw,
    )


def _json_lines(stream: BinaryIO, source: str) -> Iterator[Record | Malformed]:
    loads = orjson.loads
    for number, line in enumerate(stream, 1):
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[3:]
        if not line.strip():
            continue
        try:
            value = loads(line)
            if type(value) is dict and "data" not in value:
                # The common case: a flat object orjson parsed exactly (no float that may be
                # a rounded long integer, no integer outside 64 bits), not an envelope.
                flat = _flat(value)
                if flat or (flat is False and not _LONG_DIGITS.search(line)):
                    yield Record(value, f"line {number}", None, None, None, line)
                    continue
            if _LONG_DIGITS.search(line):
                value = _loads_exact(line)
        except orjson.JSONDecodeError as error:
            yield Malformed(source, f"line {number}", f"not JSON ({error.msg})", line.rstrip())
            continue
        except RecursionError:
            yield Malformed(source, f"line {number}", "not JSON (nested too deep)", line.rstrip())
            continue
        field = _big_integer(value)
        if field is not None:
            yield _too_big(source, f"line {number}", field, line.rstrip())
            continue
        if type(value) is dict and "data" not in value:
            yield Record(value, f"line {number}", raw=line)
        else:
            record = _record(value, source, f"line {number}", line.rstrip())
            if isinstance(record, Record):
                record.raw = line
            yield record


def _json_array(stream: BinaryIO, source: str) -> Iterator[Record | Malformed]:
    text = stream.read()
    if text.startswith(codecs.BOM_UTF8):
        text = text[3:]
    try:
        items = _loads_exact(text)
    except orjson.JSONDecodeError as error:
        yield Malformed(source, f"line {error.lineno}", f"not JSON ({error.msg}); file skipped")
        return
    except RecursionError:
        yield Malformed(source, "line 1", "not JSON (nested too deep); file skipped")
        return
    if not isinstance(items, list):
        items = [items]
    for index, item in enumerate(items, 1):
        field = _big_integer(item)
        if field is not None:
            yield _too_big(source, f"item {index}", field, b"")
            continue
        yield _record(item, source, f"item {index}", orjson.dumps(item))


def _csv(stream: BinaryIO, source: str, detect_types: bool) -> Iterator[Record | Malformed]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except (csv.Error, UnicodeDecodeError) as error:
        yield Malformed(source, "line 1", f"not CSV ({error}); file skipped")
        return
    width = len(header)
    convert = _detect if detect_types else _blank
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as error:
            yield Malformed(source, f"line {reader.line_num}", f"not CSV ({error})")
            continue
        where = f"line {reader.line_num}"
        if not row:
            continue
        if len(row) != width:
            yield Malformed(
                source,
                where,
                f"{len(row)} fields where the header has {width}",
                ",".join(row).encode(),
            )
            continue
        yield Record({key: convert(value) for key, value in zip(header, row, strict=True)}, where)


def _blank(value: str) -> Any:
    return value


def _detect(value: str) -> Any:
    """An int or float when the text is exactly one (``"007"`` stays text)."""
    if _INTEGER.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value
