"""The pull data source contract: read records in batches, report progress, checkpoint.

A source is a small class in a module that also holds a ``CONFIG`` dict describing its
parameters (the CLI builds ``eventsink pull SOURCE --help`` and its options from it)::

    CONFIG = {
        "title": "Lines of a JSON file",
        "params": [
            {"name": "path", "title": "File", "placeholder": "events.jsonl",
             "help": "The file to read.", "required": True},
        ],
    }

    class LinesSource(DataSource):
        name = "lines"

        def read(self, n=None):
            ...                                    # up to about n records, None at the end
            self.state("file", {"offset": 1234})   # where to resume after these records
            return records

How records become events: the table is the ``destination`` parameter (default: the source's
``name``); keys reserved for the event envelope (``id``, ``instance``, ``created``) are renamed
with a ``source_`` prefix; and when the record has a key of its own (the ``source_key``
parameter, or :meth:`DataSource.key`) the event id is derived from it (:func:`derive_event_id`),
so a record read twice becomes the same event and ULID-keyed sinks ignore the repeat.

Checkpoints: ``state(state_id, state)`` declares where to resume. It covers every record
returned before it and those returned by the ``read()`` call during which it was declared.
States with the same ``state_id`` merge (later keys win). The puller commits a checkpoint only
after every record it covers is committed in the outbox, so a resumed run never skips a record;
it re-reads at most the records of the last, uncommitted read.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import orjson

from ..config import REQUIRED, Option, Secret, validate_options
from ..event import RESERVED_KEYS
from ..exceptions import ConfigError
from ..ids import CROCKFORD

logger = logging.getLogger("eventsink")

# RFC 4648 base32 and Crockford's use the same bit layout, only different letters.
_TO_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", CROCKFORD)

_KINDS = {"str": str, "int": int, "float": float, "bool": bool, "list": list}

# Parameters every source accepts, besides those of its CONFIG.
COMMON_PARAMS: tuple[dict[str, Any], ...] = (
    {
        "name": "destination",
        "title": "Destination table",
        "placeholder": "table",
        "help": "Table (event type) the records go to; default: the source's name.",
    },
    {
        "name": "source_key",
        "title": "Key field(s)",
        "placeholder": "id",
        "help": "Field(s) that identify a record (comma-separated); a record read again then "
        "gets the same event id and sinks ignore the repeat.",
        "type": "list",
    },
)


def param_options(params: Sequence[Mapping[str, Any]]) -> tuple[Option, ...]:
    """Turn ``CONFIG["params"]`` entries into :class:`~eventsink.config.Option` objects."""
    options = []
    for param in params:
        kind = _KINDS.get(param.get("type", "str"))
        if kind is None:
            raise TypeError(f"param {param['name']!r} has an unknown type {param['type']!r}")
        default = REQUIRED if param.get("required") else param.get("default")
        options.append(
            Option(
                param["name"],
                kind,
                default,
                param.get("help", ""),
                secret=bool(param.get("secret")),
                choices=tuple(param["choices"]) if param.get("choices") else None,
            )
        )
    return tuple(options)


def derive_event_id(identity: str, key: Any) -> str:
    """The event id of the record with ``key`` from the source known as ``identity``.

    The rule: the 80-bit BLAKE2b digest of ``identity``, a newline and the compact JSON of
    ``key``, in Crockford base32 after a zero timestamp (``0000000000``). The result is a valid
    ULID (26 characters) whose time is the Unix epoch, so derived ids are recognisable and
    sort before generated ones; 80 bits make a collision unlikely below ~10^11 records.
    """
    digest = hashlib.blake2b(
        identity.encode() + b"\n" + orjson.dumps(key, option=orjson.OPT_SORT_KEYS),
        digest_size=10,
    ).digest()
    return "0000000000" + base64.b32encode(digest).decode("ascii").translate(_TO_CROCKFORD)


class DataSource:
    """Base class of pull data sources.

    ``source`` holds the user's parameters (validated against the module's ``CONFIG`` plus
    :data:`COMMON_PARAMS`; secret ones are :class:`~eventsink.config.Secret`); ``options``
    holds hints from the puller: ``state`` (the last committed checkpoint, a dict of
    ``state_id -> state``) and ``on_progress`` (a callback). Subclasses set ``name`` and
    implement :meth:`read`; they may override :meth:`close`, :meth:`identity` and :meth:`key`.
    """

    name: ClassVar[str] = ""
    #: attempts of one ``read()`` on retryable errors, and the first backoff delay (doubled)
    retries: ClassVar[int] = 3
    retry_initial: ClassVar[float] = 0.5

    def __init__(self, source: Mapping[str, Any], options: Mapping[str, Any] | None = None):
        self.source = validate_options(self.options(), dict(source), prefix="")
        self.hints = dict(options or {})
        self.resume: dict[str, dict[str, Any]] = dict(self.hints.get("state") or {})
        self.destination: str = self.source["destination"] or self.name
        self.loaded = 0
        self.total: int | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._on_progress: Callable[..., Any] | None = self.hints.get("on_progress")
        keys = self.source["source_key"]
        self._key_fields: list[str] | None = list(keys) if keys else None

    # -- what a source describes about itself ---------------------------------------------

    @classmethod
    def config(cls) -> dict[str, Any]:
        """The ``CONFIG`` dict of the class (or of its module)."""
        config = cls.__dict__.get("CONFIG") or getattr(sys.modules[cls.__module__], "CONFIG", None)
        return dict(config or {"title": cls.name, "params": []})

    @classmethod
    def params(cls) -> list[dict[str, Any]]:
        """Every parameter: the ``CONFIG`` ones, then the common ones."""
        own = list(cls.config().get("params", []))
        names = {param["name"] for param in own}
        return own + [param for param in COMMON_PARAMS if param["name"] not in names]

    @classmethod
    def options(cls) -> tuple[Option, ...]:
        """The parameters as validated options."""
        return param_options(cls.params())

    def identity(self) -> str:
        """Names what this source reads, for checkpoints and derived ids; never a secret.

        The default: the source's name, the destination and every non-secret parameter.
        """
        secret = {param["name"] for param in self.params() if param.get("secret")}
        plain = {
            key: value
            for key, value in self.source.items()
            if key not in secret
            and key not in ("destination", "source_key")
            and not isinstance(value, Secret)
        }
        body = orjson.dumps(plain, option=orjson.OPT_SORT_KEYS, default=str).decode()
        return f"{self.name}:{self.destination}:{body}"

    def key(self, record: Mapping[str, Any]) -> Any:
        """The record's own key (``source_key`` fields), or ``None`` when it has none."""
        if not self._key_fields:
            return None
        try:
            values = [record[field] for field in self._key_fields]
        except KeyError as error:
            raise ConfigError(
                f"config key 'source_key': a record has no field {error.args[0]!r}",
                key="source_key",
            ) from None
        return values[0] if len(values) == 1 else values

    # -- the contract ----------------------------------------------------------------------

    def read(self, n: int | None = None) -> list[dict[str, Any]] | None:
        """Return up to about ``n`` records (``None``: no limit hint), or ``None`` at the end.

        Raise :class:`~eventsink.exceptions.RetryableError` (or any error whose ``retryable``
        attribute is true) for a failure worth retrying; the call is retried with backoff.
        A retried call must return the same records, so advance only on success.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (connections, files). Called once, also after a failure."""

    # -- helpers for implementations -------------------------------------------------------

    def progress(self, loaded: int, total: int | None, msg: str | None = None) -> None:
        """Report ``loaded`` of ``total`` records (``total`` ``None`` when unknown)."""
        self.loaded, self.total = loaded, total
        if self._on_progress is not None:
            self._on_progress(loaded, total, msg)

    def state(self, state_id: str, state: Mapping[str, Any]) -> None:
        """Declare a checkpoint covering the records returned so far (see the module doc)."""
        self._pending.append((state_id, dict(state)))

    def log(self, *msgs: Any) -> None:
        """Log a message to the ``eventsink`` logger, prefixed with the source's name.

        Secret parameters are :class:`~eventsink.config.Secret` and show as ``********``.
        """
        logger.info("eventsink source %s: %s", self.name, " ".join(str(m) for m in msgs))

    def take_states(self) -> list[tuple[str, dict[str, Any]]]:
        """The states declared since the last call (used by the puller)."""
        states, self._pending = self._pending, []
        return states

    def resume_state(self, state_id: str) -> dict[str, Any]:
        """The committed state of ``state_id`` this run resumes from (empty: from the start)."""
        return dict(self.resume.get(state_id) or {})

    def to_data(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The record as event data: envelope keys renamed ``source_<key>``."""
        if RESERVED_KEYS.isdisjoint(str(key).lower() for key in record):
            return dict(record)
        return {
            (f"source_{k}" if str(k).lower() in RESERVED_KEYS else k): v for k, v in record.items()
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} -> {self.destination}>"


def is_retryable(error: BaseException) -> bool:
    """Whether a failed ``read()`` is worth another attempt."""
    return bool(getattr(error, "retryable", False))


def read_with_retry(
    source: DataSource,
    n: int | None,
    *,
    retries: int | None = None,
    initial: float | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> list[dict[str, Any]] | None:
    """Call ``source.read(n)``, retrying retryable errors with exponential backoff.

    ``retries`` is the number of attempts in all (default ``source.retries``). Permanent
    errors and errors without a true ``retryable`` attribute are raised at once.
    """
    attempts = max(1, retries if retries is not None else source.retries)
    delay = initial if initial is not None else source.retry_initial
    attempt = 1
    while True:
        try:
            return source.read(n)
        except Exception as error:
            if not is_retryable(error) or attempt >= attempts:
                raise
            wait = max(delay, getattr(error, "retry_after", None) or 0)
            logger.warning(
                "eventsink source %s: read failed (%s); attempt %d of %d in %.2fs",
                source.name,
                error,
                attempt + 1,
                attempts,
                wait,
            )
            sleep(wait)
            delay *= 2
            attempt += 1
