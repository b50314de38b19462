"""Configuration: one dict shape for every entry point, validated once at start.

The same dict configures the Datasette plugin (its ``plugins`` block), the CLI (``--config``
YAML or JSON) and ``Client(**kwargs)``::

    {
        "sink": "datasette",                 # one sink, its options beside it...
        "api_url": "https://example.com/db/-/create",
        "api_token": {"$env": "EVENTS_TOKEN"},
        "batch_limit": 100,                  # delivery options: defaults for every sink
        "sinks": [                           # ...or several sinks, each with its own options
            {"type": "file", "path": "events.jsonl", "batch_limit": 500},
        ],
    }

Any value may be ``{"$env": "NAME"}`` (an environment variable) or ``{"$file": "path"}`` (a
file's text, stripped). Errors name the key, say what was expected and, for an unknown key, list
the known ones. Values of options marked ``secret`` are wrapped in :class:`Secret`, whose
``repr`` and ``str`` never show the value.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from .exceptions import ConfigError

REQUIRED: Any = object()  # marks an Option without a default


class Secret:
    """A secret string (a token, a password) that never shows itself.

    ``str()`` and ``repr()`` give ``'********'``; call :meth:`reveal` where the value is needed.
    A secret read from a file (``{"$file": PATH}``) remembers the file, so :meth:`reload` can
    pick up a rotated token without a restart.
    """

    __slots__ = ("_value", "path")

    def __init__(self, value: str, *, path: Path | None = None) -> None:
        self._value = value
        self.path = path

    def reveal(self) -> str:
        """Return the secret value itself."""
        return self._value

    def reload(self) -> bool:
        """Read the secret's file again; return True when the value changed.

        A secret not read from a file, or a file that cannot be read now, keeps its value.
        """
        if self.path is None:
            return False
        try:
            value = self.path.read_text().strip()
        except OSError:
            return False
        changed = bool(value) and value != self._value
        if changed:
            self._value = value
        return changed

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:  # pickling would otherwise be a way to leak
        raise TypeError("Secret values cannot be pickled")


def reveal(value: Any) -> Any:
    """The plain value of a :class:`Secret`, or ``value`` itself."""
    return value.reveal() if isinstance(value, Secret) else value


@dataclass(frozen=True)
class Option:
    """One documented configuration key of a sink, source or the pipeline.

    ``kind`` is the expected Python type (``str``, ``int``, ``float``, ``bool``, ``list`` or
    ``dict``); strings such as ``"10"`` from the command line are converted to it.
    """

    name: str
    kind: type = str
    default: Any = None
    help: str = ""
    secret: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    nullable: bool = True

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe_default(self) -> str:
        """The default as a person reads it in ``--help`` and the docs."""
        if self.required:
            return "required"
        if self.default is None:
            return "none"
        return repr(self.default)


def resolve_references(value: Any, key: str) -> Any:
    """Replace ``{"$env": NAME}`` and ``{"$file": PATH}`` anywhere inside ``value``."""
    if isinstance(value, Mapping):
        if set(value) == {"$env"}:
            name = value["$env"]
            if name not in os.environ:
                raise ConfigError(
                    f"config key {key!r} reads the environment variable {name!r}, which is not set",
                    key=key,
                )
            return os.environ[name]
        if set(value) == {"$file"}:
            path = Path(value["$file"]).expanduser()
            try:
                return path.read_text().strip()
            except OSError as error:
                raise ConfigError(
                    f"config key {key!r} reads the file {str(path)!r}: {error.strerror}",
                    key=key,
                ) from None
        return {k: resolve_references(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_references(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


class ByteSize(int):
    """A number of bytes. Configurations may give an integer or a string with a unit:
    ``"512MB"``, ``"1.5 GiB"``, ``"64kb"`` (KB, MB, GB are powers of 1000; KiB, MiB, GiB of 1024).
    """

    UNITS = {
        "": 1,
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
    }
    _PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")

    @classmethod
    def parse(cls, text: str) -> ByteSize | None:
        """The size ``text`` names, or ``None`` when it is not a size."""
        match = cls._PATTERN.fullmatch(text)
        if match is None or match.group(2).lower() not in cls.UNITS:
            return None
        return cls(int(float(match.group(1)) * cls.UNITS[match.group(2).lower()]))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(option: Option, value: Any, key: str) -> Any:
    kind = option.kind
    if option.secret and isinstance(value, Secret):
        return value
    if value is None:
        if option.nullable:
            return None
        raise ConfigError(f"config key {key!r} cannot be null", key=key)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif kind is ByteSize:
        size = ByteSize.parse(value) if isinstance(value, str) else None
        if isinstance(value, int) and not isinstance(value, bool):
            size = ByteSize(value)
        if size is not None:
            return _check_minimum(option, size, key)
    elif kind in (int, float):
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = kind(value)
        if isinstance(value, bool):
            pass  # True is an int in Python, never a number in a config
        elif kind is int and isinstance(value, int):
            return _check_minimum(option, value, key)
        elif kind is float and isinstance(value, (int, float)):
            return _check_minimum(option, float(value), key)
    elif kind is list:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
    elif isinstance(value, kind):
        return value
    elif kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(
        f"config key {key!r} must be {_kind_name(kind)}, not {type(value).__name__} ({value!r})"
        if not option.secret
        else f"config key {key!r} must be {_kind_name(kind)}, not {type(value).__name__}",
        key=key,
    )


def _check_minimum(option: Option, value: float, key: str) -> Any:
    if option.minimum is not None and value < option.minimum:
        raise ConfigError(
            f"config key {key!r} must be at least {option.minimum}, not {value}", key=key
        )
    return value


def _kind_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "an object",
        ByteSize: "a size in bytes (an integer, or a string such as '512MB')",
    }.get(kind, kind.__name__)


def _file_reference(value: Any) -> Path | None:
    """The path of a ``{"$file": PATH}`` reference, else ``None``."""
    if isinstance(value, Mapping) and set(value) == {"$file"}:
        return Path(value["$file"]).expanduser()
    return None


def unknown_key_error(key: str, known: Iterable[str], *, prefix: str = "") -> ConfigError:
    """A :class:`ConfigError` for an unknown key that lists the known ones."""
    known = sorted(known)
    suggestion = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {suggestion[0]!r}?" if suggestion else ""
    return ConfigError(
        f"unknown config key {prefix + key!r}.{hint} Known keys: {', '.join(known)}",
        key=prefix + key,
    )


def validate_options(
    options: Sequence[Option], given: Mapping[str, Any], *, prefix: str = ""
) -> dict[str, Any]:
    """Check ``given`` against ``options``; return every option's value (defaults filled in).

    Raises :class:`ConfigError` for an unknown key, a missing required key, a value of the
    wrong type or outside its choices. ``prefix`` is prepended to key names in messages.
    """
    by_name = {option.name: option for option in options}
    for key in given:
        if key not in by_name:
            raise unknown_key_error(key, by_name, prefix=prefix)
    values: dict[str, Any] = {}
    for option in options:
        key = prefix + option.name
        if option.name not in given:
            if option.required:
                raise ConfigError(
                    f"config key {key!r} is required: {option.help or option.name}", key=key
                )
            values[option.name] = option.default
            continue
        value = _coerce(option, resolve_references(given[option.name], key), key)
        if option.choices is not None and value not in option.choices:
            raise ConfigError(
                f"config key {key!r} must be one of {', '.join(map(repr, option.choices))}, "
                f"not {value!r}",
                key=key,
            )
        if option.secret and isinstance(value, str):
            value = Secret(value, path=_file_reference(given[option.name]))
        values[option.name] = value
    return values


# -- the pipeline's own keys ----------------------------------------------------------------

DELIVERY_OPTIONS: tuple[Option, ...] = (
    Option("batch_limit", int, 100, "Most events in one batch handed to the sink.", minimum=1),
    Option(
        "flush_interval",
        float,
        1.0,
        "Seconds a partial batch may wait for more events before it is sent.",
        minimum=0,
    ),
    Option(
        "max_rate",
        int,
        None,
        "Most sends per time_period (a token bucket); none means unlimited.",
        minimum=1,
    ),
    Option("time_period", float, 1.0, "The period of max_rate, in seconds.", minimum=0.001),
    Option(
        "concurrency",
        int,
        1,
        "Batches a sink may have in flight at once (each still paced by max_rate; never more "
        "than the sink's max_concurrent_sends).",
        minimum=1,
    ),
    Option("retry_initial", float, 0.5, "First retry delay in seconds (then doubled).", minimum=0),
    Option("retry_max", float, 5.0, "Longest delay between two retries, seconds.", minimum=0),
    Option(
        "max_age",
        float,
        None,
        "Seconds a failing batch is retried before it is dead-lettered; none: forever.",
        minimum=0,
    ),
    Option(
        "max_attempts",
        int,
        None,
        "Attempts before a failing batch is dead-lettered; none: no limit.",
        minimum=1,
    ),
    Option(
        "pause_interval",
        float,
        30.0,
        "Seconds between attempts while a sink is paused (e.g. its token is refused).",
        minimum=0.01,
    ),
)

PIPELINE_OPTIONS: tuple[Option, ...] = (
    Option("instance", str, None, "Name of this instance in every event; default: host name."),
    Option(
        "outbox",
        str,
        None,
        "Path of the SQLite outbox, or ':memory:' (not durable); default: a file under the "
        "user data directory (the internal database in Datasette).",
    ),
    Option(
        "durability",
        str,
        "normal",
        "'normal': survives a process crash; 'fsync': also a power loss (slower).",
        choices=("normal", "fsync"),
        nullable=False,
    ),
    Option(
        "max_events",
        int,
        None,
        "Most undelivered events kept; default 100,000 in memory, 1,000,000 on disk.",
        minimum=1,
    ),
    Option(
        "max_bytes",
        ByteSize,
        None,
        "Most bytes of undelivered event data kept (e.g. '500MB'); default: no byte limit.",
        minimum=1,
    ),
    Option(
        "max_uncommitted",
        int,
        5000,
        "Most events accepted but not yet committed to the outbox (held in memory); beyond "
        "it write() waits for the next commit ('drop_newest': drops).",
        minimum=1,
        nullable=False,
    ),
    Option(
        "overflow",
        str,
        "block",
        "When the outbox is full: 'block' the writer, 'drop_newest' or 'drop_oldest'.",
        choices=("block", "drop_newest", "drop_oldest"),
        nullable=False,
    ),
    Option(
        "metrics_addr",
        str,
        None,
        "Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. '127.0.0.1:9464'); "
        "default: off.",
    ),
)

SINK_ENTRY_KEYS = ("type", "name")


# -- what differs between the ways in -------------------------------------------------------

#: Where an entry point keeps events when no ``outbox`` is configured, as the docs say it.
OUTBOX_PLACES = {
    "user": "user data file",
    "datasette": "internal database",
    "none": "none: the stream",
}


@dataclass(frozen=True)
class EntryPoint:
    """The defaults of one way into eventsink, applied beneath the user's configuration.

    Every other default is its option's own (above). ``sink`` is used when the configuration
    names none; ``defaults`` are option values that differ from the catalogue's; ``outbox``
    says where events wait when no ``outbox`` is configured; with
    ``names_sinks_after_destination`` a sink given no ``name`` is called by its ``describe()``
    (``sqlite /home/ada/events.db``) in logs, output and status instead of by its type (its
    pending events belong to its destination either way). ``why`` is shown in the
    configuration reference.
    """

    name: str
    sink: str
    why: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: "user": the shared file under the user data directory; "datasette": the plugin's
    #: internal database; "none": no outbox (``consume`` leaves events in the stream).
    outbox: str = "user"
    names_sinks_after_destination: bool = False

    def __post_init__(self) -> None:
        known = {option.name for option in (*PIPELINE_OPTIONS, *DELIVERY_OPTIONS)}
        for key in self.defaults:
            if key not in known:
                raise ValueError(f"entry point {self.name!r} sets unknown option {key!r}")
        if self.outbox not in OUTBOX_PLACES:
            raise ValueError(
                f"entry point {self.name!r}: outbox must be one of {', '.join(OUTBOX_PLACES)}"
            )


#: Every way into eventsink and what it does differently. The Python client and the CLI agree
#: on the sink (``sqlite``: a local ``events.db`` that ``datasette events.db`` opens) so a
#: program and a shell command given the same configuration deliver to the same place; the
#: Datasette plugin's purpose is forwarding to another Datasette, so its default is ``datasette``.
ENTRY_POINTS: dict[str, EntryPoint] = {
    entry.name: entry
    for entry in (
        EntryPoint(
            "client",
            "sqlite",
            "eventsink.Client: the same default sink as the CLI.",
        ),
        EntryPoint(
            "cli",
            "sqlite",
            "eventsink replay --to: a local events.db, ready for 'datasette events.db'.",
            names_sinks_after_destination=True,
        ),
        EntryPoint(
            "send",
            "sqlite",
            "eventsink send reads in bulk: bigger batches mean fewer outbox round trips.",
            defaults={"batch_limit": 1000},
            names_sinks_after_destination=True,
        ),
        EntryPoint("pull", "sqlite", "eventsink pull: as the CLI."),
        EntryPoint(
            "consume",
            "sqlite",
            "eventsink consume: as the CLI; messages wait in the JetStream stream, not an outbox.",
            outbox="none",
        ),
        EntryPoint(
            "datasette",
            "datasette",
            "The Datasette plugin. The original plugin sent 10 events per request at most "
            "once every 10 s, capping delivery at 1 event/s; 100-row batches (the receiver's "
            "default max_insert_rows) at most 10 requests a second keep up with 1,000 "
            "events/s while using a few percent of the receiver's time. Two batches in flight "
            "let the next request reach the receiver while it answers the current one.",
            defaults={"max_rate": 10, "concurrency": 2},
            outbox="datasette",
        ),
    )
}


def _field_type(option: Option) -> Any:
    kind = int if option.kind is ByteSize else option.kind
    return kind | None if option.nullable else kind


def settings_class(
    name: str,
    options: Sequence[Option],
    doc: str,
    *,
    leading: Sequence[tuple[str, Any]] = (),
    trailing: Sequence[tuple[str, Any, Any]] = (),
) -> type:
    """A frozen dataclass with one field per option, its default the option's default.

    ``leading`` fields (name, type) come first and have no default; ``trailing`` fields
    (name, type, ``dataclasses.field(...)``) come last. This is how the settings classes are
    derived from the option catalogue, so a default is written once, in its :class:`Option`.
    """
    fields: list[Any] = [
        *leading,
        *((option.name, _field_type(option), field(default=option.default)) for option in options),
        *trailing,
    ]
    cls = make_dataclass(name, fields, frozen=True)
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls


#: How one sink's batches are formed, paced and retried: a field per :data:`DELIVERY_OPTIONS`
#: entry, with that option's default.
DeliverySettings = settings_class(
    "DeliverySettings",
    DELIVERY_OPTIONS,
    "How one sink's batches are formed, paced and retried (fields: :data:`DELIVERY_OPTIONS`).",
)


@dataclass(frozen=True)
class SinkConfig:
    """One configured sink: its plugin ``type``, its outbox ``name`` and its options."""

    type: str
    name: str
    options: dict[str, Any]
    delivery: DeliverySettings

    def __repr__(self) -> str:  # options may hold Secret values, which hide themselves
        return f"SinkConfig(type={self.type!r}, name={self.name!r}, options={self.options!r})"


#: A whole validated configuration: ``instance`` (resolved to the host name when not given),
#: ``sinks`` (:class:`SinkConfig`), a field per other :data:`PIPELINE_OPTIONS` entry with that
#: option's default, and ``extra`` (the values of a caller's ``extra_options``).
Settings = settings_class(
    "Settings",
    [option for option in PIPELINE_OPTIONS if option.name != "instance"],
    "A whole validated configuration (fields: ``instance``, ``sinks``, the other "
    ":data:`PIPELINE_OPTIONS`, ``extra``).",
    leading=(("instance", str), ("sinks", tuple)),
    trailing=(("extra", dict, field(default_factory=dict)),),
)


def parse_config(
    config: Mapping[str, Any],
    sink_options: Any,
    *,
    default_sink: str | None = None,
    extra_options: Sequence[Option] = (),
) -> Settings:
    """Validate a whole configuration dict and return :class:`Settings`.

    ``sink_options(type_name, key)`` returns the option list of a sink plugin (raising
    :class:`~eventsink.exceptions.UnknownPluginError` for an unknown one).
    ``extra_options`` are keys the caller adds (the Datasette plugin's ``events`` filter, ...).
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"the configuration must be an object, not {type(config).__name__}")
    own = {option.name for option in (*PIPELINE_OPTIONS, *DELIVERY_OPTIONS, *extra_options)}
    top = {key: value for key, value in config.items() if key in own}
    pipeline = validate_options(
        (*PIPELINE_OPTIONS, *extra_options),
        {key: value for key, value in top.items() if key not in _DELIVERY_NAMES},
    )
    delivery_defaults = validate_options(
        DELIVERY_OPTIONS, {key: value for key, value in top.items() if key in _DELIVERY_NAMES}
    )
    rest = {key: value for key, value in config.items() if key not in own}

    entries: list[tuple[str, Mapping[str, Any]]] = []
    if "sinks" in rest:
        # Only the list itself and each entry's type and name are resolved here: the options
        # are resolved by validate_options, which keeps a secret's file to read it again.
        sinks = rest.pop("sinks")
        if isinstance(sinks, Mapping):
            sinks = resolve_references(sinks, "sinks")
        single = rest.pop("sink", None)
        if not isinstance(sinks, list) or not sinks:
            raise ConfigError("config key 'sinks' must be a non-empty list of objects", key="sinks")
        if rest or single is not None:
            key = "sink" if single is not None else next(iter(rest))
            raise ConfigError(
                f"config key {key!r} is not a pipeline option; with 'sinks' given, put each "
                "sink's options inside its entry of 'sinks'",
                key=key,
            )
        for index, entry in enumerate(sinks):
            if not isinstance(entry, Mapping) or "type" not in entry:
                raise ConfigError(
                    f"config key 'sinks[{index}]' must be an object with a 'type' "
                    "(the sink's name, e.g. 'file')",
                    key=f"sinks[{index}]",
                )
            named = {
                key: resolve_references(entry[key], f"sinks[{index}].{key}")
                for key in SINK_ENTRY_KEYS
                if key in entry
            }
            entries.append((f"sinks[{index}].", {**entry, **named}))
    else:
        sink_type = resolve_references(rest.pop("sink", default_sink), "sink")
        if not sink_type:
            raise ConfigError(
                "config key 'sink' is required: the name of the sink to use", key="sink"
            )
        entries.append(("", {"type": sink_type, **rest}))

    sink_configs = []
    names: set[str] = set()
    for prefix, entry in entries:
        sink_configs.append(
            _parse_sink_entry(prefix, entry, sink_options, delivery_defaults, names)
        )
    instance = pipeline.pop("instance") or socket.gethostname()
    if pipeline.get("metrics_addr"):
        from .metrics import parse_addr

        parse_addr(pipeline["metrics_addr"])  # a ConfigError naming the key
    extra = {option.name: pipeline.pop(option.name) for option in extra_options}
    return Settings(instance=instance, sinks=tuple(sink_configs), extra=extra, **pipeline)


_DELIVERY_NAMES = frozenset(option.name for option in DELIVERY_OPTIONS)


def _parse_sink_entry(
    prefix: str,
    entry: Mapping[str, Any],
    sink_options: Any,
    delivery_defaults: dict[str, Any],
    names: set[str],
) -> SinkConfig:
    sink_type = entry["type"]
    if not isinstance(sink_type, str):
        raise ConfigError(f"config key '{prefix}type' must be a sink name", key=f"{prefix}type")
    options = sink_options(sink_type, f"{prefix}type" if prefix else "sink")
    delivery_given = {k: v for k, v in entry.items() if k in _DELIVERY_NAMES}
    sink_given = {
        k: v for k, v in entry.items() if k not in _DELIVERY_NAMES and k not in SINK_ENTRY_KEYS
    }
    known = {option.name for option in options} | _DELIVERY_NAMES
    if prefix:
        known |= set(SINK_ENTRY_KEYS)
    else:
        known |= {"sink", "sinks"} | {option.name for option in PIPELINE_OPTIONS}
    for key in sink_given:
        if key not in {option.name for option in options}:
            raise unknown_key_error(key, known, prefix=prefix)
    values = validate_options(options, sink_given, prefix=prefix)
    validated = validate_options(DELIVERY_OPTIONS, delivery_given, prefix=prefix)
    delivery = {**delivery_defaults, **{key: validated[key] for key in delivery_given}}
    name = entry.get("name") or sink_type
    if name in names:
        raise ConfigError(
            f"two sinks are named {name!r}; give each a distinct 'name' (it tells them apart "
            "in logs, status and hooks)",
            key=f"{prefix}name",
        )
    names.add(name)
    return SinkConfig(
        type=sink_type, name=name, options=values, delivery=DeliverySettings(**delivery)
    )
