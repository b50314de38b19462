"""The event envelope and the rule that makes any event's data JSON-safe.

An :class:`Event` is what flows through the pipeline: an ``id`` (a ULID, so ids sort by
creation), the ``instance`` that produced it, the ``created`` time (UTC ISO-8601 with
milliseconds), the destination ``table`` and the ``data``, a dict that JSON can hold.

:func:`normalise` is applied to every event's data when it is written. The conversion rule:

============================  ======================================================
value                         becomes
============================  ======================================================
str                           itself; a lone surrogate (not valid Unicode) is rejected
int                           itself within the signed 64-bit range (what SQLite and
                              the sinks store exactly); outside it, rejected
bool, None                    itself
float                         itself; NaN and infinities are rejected
dict (str keys)               a dict, each value converted by this rule
list, tuple                   a list
set, frozenset                a sorted list (insertion order if it cannot be sorted)
datetime, date, time          ``value.isoformat()`` (the timezone is kept as given)
Decimal                       ``str(value)`` (no precision is lost)
UUID                          ``str(value)``
bytes, bytearray, memoryview  standard base64 text
Enum                          its ``value``, converted by this rule
============================  ======================================================

Anything else raises :class:`~eventsink.exceptions.EventError` naming the field, at ``write()``
time, so a bad event never reaches the worker. So do:

* more than :data:`MAX_DEPTH` (64) levels of lists and dicts inside ``data`` (a list in
  ``data`` is level 1);
* the keys ``id``, ``instance`` and ``created``, reserved for the envelope, in any case;
* a top-level key holding a NUL character (U+0000), which no SQL column name can;
* two top-level keys that differ only in case (``"A"`` and ``"a"``): table-shaped sinks store
  the top-level keys as columns, and SQL compares column names without regard to case, so one
  of the two values would be lost.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import math
import uuid
from decimal import Decimal
from typing import Any

import orjson

from .exceptions import EventError

RESERVED_KEYS = frozenset({"id", "instance", "created"})
#: The deepest nesting of lists and dicts allowed inside an event's data.
MAX_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_PLAIN = (bool, type(None))


class Event:
    """One event: envelope fields plus a JSON-safe ``data`` dict.

    ``data`` is decoded lazily when the event was loaded from a durable outbox, so a sink
    that only needs JSON (:meth:`data_json`) never pays for parsing it.
    """

    __slots__ = ("_data", "_data_json", "created", "id", "instance", "table")

    def __init__(
        self,
        id: str,
        table: str,
        instance: str,
        created: str,
        data: dict[str, Any] | None = None,
        *,
        data_json: bytes | None = None,
    ) -> None:
        self.id = id
        self.table = table
        self.instance = instance
        self.created = created
        self._data = data
        self._data_json = data_json

    @property
    def data(self) -> dict[str, Any]:
        """The event's own fields, JSON-safe."""
        if self._data is None:
            self._data = orjson.loads(self._data_json) if self._data_json else {}
        return self._data

    def data_json(self) -> bytes:
        """``data`` serialised as compact JSON (computed once)."""
        if self._data_json is None:
            self._data_json = compact(orjson.dumps(self._data or {}))
        return self._data_json

    def row(self) -> dict[str, Any]:
        """The flat row a table-shaped sink stores: ``id``, ``instance``, ``created``, data."""
        return {"id": self.id, "instance": self.instance, "created": self.created, **self.data}

    def row_json(self) -> bytes:
        """:meth:`row` as JSON, spliced from the cached data JSON instead of re-serialised."""
        head = orjson.dumps({"id": self.id, "instance": self.instance, "created": self.created})
        body = self.data_json()
        if body == b"{}":
            return head
        return head[:-1] + b"," + body[1:]

    def to_dict(self) -> dict[str, Any]:
        """The whole envelope as a dict: ``id``, ``table``, ``instance``, ``created``, ``data``."""
        return {
            "id": self.id,
            "table": self.table,
            "instance": self.instance,
            "created": self.created,
            "data": self.data,
        }

    def to_json(self) -> bytes:
        """:meth:`to_dict` as one compact JSON document (one line of a JSONL file)."""
        head = orjson.dumps(
            {"id": self.id, "table": self.table, "instance": self.instance, "created": self.created}
        )
        return head[:-1] + b',"data":' + self.data_json() + b"}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, table={self.table!r}, instance={self.instance!r})"


def compact(json: bytes) -> bytes:
    """An exact-size copy of ``json``, a result of ``orjson.dumps``.

    orjson (3.13) returns bytes that keep the whole buffer they were written into: about 4 KB of
    memory for an event of 100 bytes. Events wait in memory by the thousand (held for their
    lane, read from a file): the copy costs 0.1 µs and keeps them 1/8 the size.
    """
    return b"".join((json, b""))  # one allocation of the exact size (a slice would be two)


def normalise(data: Any) -> dict[str, Any]:
    """Return a JSON-safe copy of ``data`` (see the module docstring for the rule).

    Raises :class:`EventError` naming the field for a value the rule cannot convert, for a
    reserved key, for keys that differ only in case, or when ``data`` is not a dict.
    """
    if not isinstance(data, dict):
        raise EventError(f"event data must be a dict, not {type(data).__name__}", field="")
    _check_keys(data)
    # Fast path: a flat dict of plain values, by far the common case, is copied as is.
    for value in data.values():
        kind = type(value)
        if kind is str:
            if value.isascii() or _valid_text(value):
                continue
        elif kind is int:
            if INT_MIN <= value <= INT_MAX:
                continue
        elif kind in _PLAIN or (kind is float and math.isfinite(value)):
            continue
        break
    else:
        return dict(data)
    return _convert_dict(data, "", 1)


#: Key tuples already found good. Events of one table mostly share their keys, so checking
#: each key (a quarter of write()'s validation) is done once per shape; bounded, so that
#: events with ever-new keys cannot grow it without end.
_GOOD_KEYS: set[tuple[Any, ...]] = set()
_GOOD_KEYS_LIMIT = 4096


def _check_keys(data: dict[Any, Any]) -> None:
    """Refuse reserved keys and top-level keys equal but for case (see the module docstring)."""
    keys = tuple(data)
    if keys in _GOOD_KEYS:
        return
    _check_each_key(data)
    if len(_GOOD_KEYS) >= _GOOD_KEYS_LIMIT:
        _GOOD_KEYS.clear()
    _GOOD_KEYS.add(keys)


def _check_each_key(data: dict[Any, Any]) -> None:
    lowered: dict[str, Any] = {}
    for key in data:
        if not isinstance(key, str):
            raise EventError(
                f"field {key!r}: keys must be strings, not {type(key).__name__}",
                field=str(key),
            )
        if not key.isascii() and not _valid_text(key):
            raise EventError(
                f"field {key!a}: the key is not valid Unicode (a lone surrogate)",
                field=ascii(key),
            )
        if "\x00" in key:
            raise EventError(
                f"field {key!r}: a key holds a NUL character (U+0000), which no SQL column "
                "name can; remove it",
                field=key,
            )
        low = key.lower()
        if low in RESERVED_KEYS:
            raise EventError(
                f"{key!r} is reserved for the event envelope and cannot be a data key; "
                f"rename it (the reserved keys are {', '.join(sorted(RESERVED_KEYS))}, "
                "in any case)",
                field=key,
            )
        if low in lowered:
            raise EventError(
                f"fields {lowered[low]!r} and {key!r} differ only in case: a SQL sink stores "
                "both in one column and would lose one value; rename one of them",
                field=key,
            )
        lowered[low] = key


def _valid_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert_dict(value: dict[Any, Any], path: str, depth: int) -> dict[str, Any]:
    converted = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise EventError(
                f"field {_join(path, repr(key))!s}: keys must be strings, not {type(key).__name__}",
                field=_join(path, str(key)),
            )
        if not _valid_text(key):
            where = _join(path, ascii(key))
            raise EventError(
                f"field {where}: the key is not valid Unicode (a lone surrogate)", field=where
            )
        converted[key] = _convert(item, _join(path, key), depth)
    return converted


def _too_deep(path: str) -> EventError:
    return EventError(
        f"field {path!r}: lists and dicts are nested more than {MAX_DEPTH} deep "
        "(the most an event may hold)",
        field=path,
    )


def _convert(value: Any, path: str, depth: int) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, enum.Enum):
        return _convert(value.value, path, depth)
    if isinstance(value, str):  # str and its subclasses
        if not value.isascii() and not _valid_text(value):
            raise EventError(
                f"field {path!r}: the text is not valid Unicode (it holds a lone surrogate, "
                f"{_first_surrogate(value)})",
                field=path,
            )
        return value
    if isinstance(value, int):  # int and its subclasses (bool handled above)
        if not INT_MIN <= value <= INT_MAX:
            raise EventError(
                f"field {path!r}: the integer is outside the 64-bit range sinks store exactly "
                "(-2**63 to 2**63-1); send it as a string to keep every digit",
                field=path,
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventError(f"field {path!r}: {value!r} cannot be stored in JSON", field=path)
        return float(value)
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise _too_deep(path)
        return _convert_dict(value, path, depth + 1)
    if isinstance(value, (list, tuple)):
        if depth > MAX_DEPTH:
            raise _too_deep(path)
        return [_convert(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        if depth > MAX_DEPTH:
            raise _too_deep(path)
        items = [_convert(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise EventError(f"field {path!r}: {value!r} cannot be stored in JSON", field=path)
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise EventError(
        f"field {path!r}: a {kind.__name__} cannot be stored in an event; convert it to a "
        "str, number, bool, None, list or dict first",
        field=path,
    )


def _first_surrogate(value: str) -> str:
    for index, char in enumerate(value):
        if 0xD800 <= ord(char) <= 0xDFFF:
            return f"U+{ord(char):04X} at position {index}"
    return "unknown position"
