"""The ``datasette`` sink: rows posted to a remote Datasette's JSON write API.

Two URL shapes are accepted for ``api_url``:

* ``https://host/db/-/create``: the first batch for each table goes to ``/-/create`` (with
  ``pk: "id"`` and ``ignore: true``, so the table is made on first use); later batches go to
  that table's ``/<db>/<table>/-/insert``.
* ``https://host/db/<table>/-/insert``: every event goes to that one (existing) table.

Every request carries ``ignore: true`` and the event's ULID as the primary key, so a batch sent
twice (a retry after a lost response, a crash before the ack) never duplicates a row.
Batches are split to the receiver's ``max_insert_rows``; a "Too many rows" answer lowers the
limit and is remembered. A receiver whose ``/-/create`` refuses ``ignore`` (Datasette 1.0a0 and
1.0a1) raises ``ConfigError``, which pauses the sink with a message naming the ``/-/insert``
URL to use instead.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from eventsink.config import REQUIRED, Option, Secret, reveal
from eventsink.event import Event
from eventsink.exceptions import (
    ConfigError,
    PermanentError,
    RejectedError,
    RetryableError,
    SinkPausedError,
)
from eventsink.hookspecs import hookimpl
from eventsink.sink import Sink

logger = logging.getLogger("eventsink")

SHAPES = "'http(s)://host/<database>/-/create' or 'http(s)://host/<database>/<table>/-/insert'"
_CREATE = re.compile(r"^(?P<db>(?:/[^/]+)*/[^/]+)/-/create/?$")
_INSERT = re.compile(r"^(?P<db>(?:/[^/]+)*/[^/]+)/(?P<table>[^/]+)/-/insert/?$")
_TOO_MANY = re.compile(r"too many rows, maximum allowed is (\d+)", re.IGNORECASE)
_NO_IGNORE = re.compile(r"invalid keys:.*\bignore\b", re.IGNORECASE)
_JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}
_TILDE_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def tilde_encode(name: str) -> str:
    """Encode a table name for a Datasette URL path (Datasette's own tilde encoding)."""
    return "".join(
        char
        if char in _TILDE_SAFE
        else "+"
        if char == " "
        else "".join(f"~{byte:02X}" for byte in char.encode("utf-8"))
        for char in name
    )


def tilde_decode(segment: str) -> str:
    """Decode a table name from a Datasette URL path segment (as Datasette does)."""
    placeholder = "\x00"  # keeps a literal % from being read as an escape
    decoded = urllib.parse.unquote_plus(segment.replace("%", placeholder).replace("~", "%"))
    return decoded.replace(placeholder, "%")


def parse_api_url(url: str) -> tuple[str, str | None]:
    """Split ``api_url`` into the database URL and the table it names (``None`` for create).

    Raises :class:`ConfigError` naming ``api_url`` and the two accepted shapes.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        match = _INSERT.match(parts.path)
        if match:
            return base + match["db"], tilde_decode(match["table"])
        match = _CREATE.match(parts.path)
        if match:
            return base + match["db"], None
    raise ConfigError(
        f"config key 'api_url' must be {SHAPES}, not {_without_secrets(url)!r}", key="api_url"
    )


def _without_secrets(url: str) -> str:
    """``url`` without user info or query string (either may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


class DatasetteSink(Sink):
    """Insert each event as a row (``Event.row()``) into a table of a remote Datasette.

    ``transport`` or ``client`` may be given (tests, custom TLS); otherwise one
    ``httpx.AsyncClient`` is made in :meth:`open` and kept for the sink's lifetime, so every
    request reuses a pooled keep-alive connection.
    """

    name = "datasette"
    max_concurrent_sends = None  # one request per call through a pooled client
    description = "Inserts events as rows through a remote Datasette's JSON write API."
    options = (
        Option(
            "api_url",
            str,
            REQUIRED,
            f"The write API endpoint: {SHAPES}.",
            nullable=False,
        ),
        Option(
            "api_token",
            str,
            None,
            'API token (needs insert-row, and create-table for /-/create); use {"$env": "NAME"}, '
            'or {"$file": PATH}, which is read again when the receiver refuses the token.',
            secret=True,
        ),
        Option(
            "table",
            str,
            None,
            "Table for every event with a /-/create URL; default: the event's own table.",
        ),
        Option(
            "columns",
            list,
            None,
            "Column order of the tables this sink creates: these columns first, in this order.",
        ),
        Option("timeout", float, 10.0, "Seconds to wait for the receiver.", minimum=0.1),
        Option(
            "max_insert_rows",
            int,
            100,
            "Most rows per request (the receiver's max_insert_rows setting).",
            minimum=1,
            nullable=False,
        ),
        Option(
            "alter",
            bool,
            False,
            "Add columns the table lacks (the token also needs alter-table).",
            nullable=False,
        ),
        Option("verify", bool, True, "Verify the receiver's TLS certificate.", nullable=False),
    )

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
        **config: Any,
    ) -> None:
        super().__init__(**config)
        self.db_url, self.fixed_table = parse_api_url(self.config["api_url"])
        self.max_rows: int = self.config["max_insert_rows"]
        self._transport = transport
        self._client = client
        self._own_client = client is None
        self._retired_tokens: list[str] = []  # replaced by a newer one from the token's file
        self._created: set[str] = set()  # tables this sink has created (or seen exist)

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        _, table = parse_api_url(config["api_url"])
        if table is not None and config["table"] not in (None, table):
            raise ConfigError(
                f"config key 'table' is {config['table']!r} but 'api_url' inserts into "
                f"{table!r}; use a /-/create URL to choose tables, or drop 'table'",
                key="table",
            )

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is None:
            headers = {}
            token = reveal(self.config["api_token"])
            if token:
                headers["authorization"] = f"Bearer {token}"
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self.config["timeout"],
                headers=headers,
                verify=self.config["verify"],
            )

    async def close(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    @property
    def destination(self) -> str:
        # The database and the table, however the URL spells them: a /-/create URL with
        # table T and T's /-/insert URL deliver to the same place. Without a table each
        # event goes to its own table of that database.
        where = f"datasette {_without_secrets(self.db_url)}"
        table = self.fixed_table or self.config["table"]
        return f"{where} table {table}" if table else where

    def describe(self) -> str:
        return _without_secrets(self.config["api_url"])

    # -- sending ---------------------------------------------------------------------------

    async def send(self, batch: Sequence[Event]) -> None:
        if self._client is None:
            await self.open()
        by_table: dict[str, list[bytes]] = {}
        for event in batch:
            table = self.fixed_table or self.config["table"] or event.table
            by_table.setdefault(table, []).append(event.row_json())
        for table, rows in by_table.items():
            start = 0
            while start < len(rows):
                size = self.max_rows
                sent = await self._send_rows(table, rows[start : start + size])
                start += sent

    async def _send_rows(self, table: str, rows: list[bytes]) -> int:
        """Send one request's worth of ``rows``; return how many were confirmed."""
        extras = b',"ignore":true' + (b',"alter":true' if self.config["alter"] else b"")
        joined = b"[" + b",".join(rows) + b"]"
        if self.fixed_table is None and table not in self._created:
            url = f"{self.db_url}/-/create"
            if self.config["columns"]:
                joined = b"[" + b",".join([self._ordered(rows[0]), *rows[1:]]) + b"]"
            body = b'{"table":' + orjson.dumps(table) + b',"pk":"id"' + extras
            body += b',"rows":' + joined + b"}"
            action = "create-table and insert-row"
        else:
            url = f"{self.db_url}/{tilde_encode(table)}/-/insert"
            body = b'{"rows":' + joined + extras + b"}"
            action = "insert-row"
        response = await self._post(url, body)
        if response.status_code in (200, 201):
            self._check_body(response)
            self._created.add(table)
            return len(rows)
        message = self._error_message(response)
        too_many = _TOO_MANY.search(message)
        if response.status_code == 400 and too_many:
            limit = int(too_many.group(1))
            new_limit = max(1, min(limit, len(rows) // 2, self.max_rows))
            if new_limit < self.max_rows:
                logger.info(
                    "eventsink datasette receiver %s accepts at most %d rows per request; "
                    "sending batches of %d from now on",
                    self.describe(),
                    limit,
                    new_limit,
                )
                self.max_rows = new_limit
                return 0  # the caller sends again with the lower limit
        if response.status_code == 400 and url.endswith("/-/create") and _NO_IGNORE.search(message):
            raise self._create_refuses_ignore(table)
        if response.status_code == 404 and table in self._created and not self.fixed_table:
            self._created.discard(table)  # the table was dropped at the receiver: make it again
            return 0
        raise self._error(response, message, table, action)

    def _ordered(self, row: bytes) -> bytes:
        # The receiver makes the table's columns in the order of the first row's keys.
        data = orjson.loads(row)
        first = {name: data.pop(name) for name in self.config["columns"] if name in data}
        return orjson.dumps({**first, **data})

    async def _post(self, url: str, body: bytes) -> httpx.Response:
        if self._client is None:
            raise RuntimeError("the datasette sink is not open")
        try:
            response = await self._client.post(url, content=body, headers=_JSON_HEADERS)
        except httpx.TimeoutException as error:
            raise RetryableError(
                f"no answer from {self.describe()} within {self.config['timeout']}s "
                f"({type(error).__name__})"
            ) from None
        except httpx.TransportError as error:
            raise RetryableError(
                f"cannot reach {self.describe()}: {type(error).__name__}: {self._scrub(error)}"
            ) from None
        return response

    def _check_body(self, response: httpx.Response) -> None:
        """A success status with a body cut short is retried (``ignore`` makes it safe)."""
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise RetryableError(
                f"{self.describe()} answered {response.status_code} with an incomplete body; "
                "sending again"
            ) from None
        if isinstance(document, dict) and document.get("ok") is False:
            raise RejectedError(
                f"{self.describe()} answered {response.status_code} but not ok: "
                f"{self._errors_text(document)}",
                status=response.status_code,
            )

    def _errors_text(self, document: Any) -> str:
        if isinstance(document, dict):
            errors = document.get("errors") or document.get("error") or document.get("title")
            if isinstance(errors, list):
                return "; ".join(str(error) for error in errors)
            if errors:
                return str(errors)
        return ""

    def _error_message(self, response: httpx.Response) -> str:
        try:
            text = self._errors_text(orjson.loads(response.content))
        except orjson.JSONDecodeError:
            # An HTML error page (a proxy's, or Datasette's own) says less than its status.
            html = "html" in response.headers.get("content-type", "")
            text = "" if html else response.text.strip()
        text = text or response.reason_phrase
        # Scrub, then cut: cut first, a token straddling the cut would survive in part.
        return self._scrub(text)[:500]

    def _reload_token(self) -> bool:
        """Pick up a new token from the token's file (``{"$file": PATH}``), if it changed."""
        token = self.config["api_token"]
        if not isinstance(token, Secret):
            return False
        previous = token.reveal()
        if not token.reload():
            return False
        self._retired_tokens.append(previous)  # still scrubbed, should a receiver echo it
        if self._client is not None:
            self._client.headers["authorization"] = f"Bearer {token.reveal()}"
        logger.info("eventsink datasette sink %s: read a new token from its file", self.describe())
        return True

    def _scrub(self, text: Any) -> str:
        """``text`` with the token blanked out, should a receiver or proxy echo it."""
        text = str(text)
        for token in (reveal(self.config["api_token"]), *self._retired_tokens):
            if token:
                text = text.replace(token, "********")
        return text

    def _create_refuses_ignore(self, table: str) -> ConfigError:
        """The error for a receiver whose ``/-/create`` refuses ``ignore`` (before 1.0a2).

        Without ``ignore`` a retried batch would fail on its own rows, so the sink does not
        fall back: it pauses (the lane keeps every event) until ``api_url`` is changed.
        """
        insert = _without_secrets(f"{self.db_url}/{tilde_encode(table)}/-/insert")
        moved_to = type(self)(api_url=insert).destination
        move = (
            f", and give it the events kept here with eventsink outbox move "
            f"'{self.destination}' '{moved_to}'"
            if moved_to != self.destination
            else " (the events kept here go there: it is the same destination)"
        )
        return ConfigError(
            f"{self.describe()} refuses 'ignore' (Datasette before 1.0a2 does not accept it "
            f"on /-/create): create the table {table!r} with an 'id' primary key at the "
            f"receiver, then set api_url to {insert}{move}",
            key="api_url",
        )

    def _error(self, response: httpx.Response, message: str, table: str, action: str) -> Exception:
        status = response.status_code
        where = f"{self.describe()} (table {table!r})"
        if status in (401, 403):
            if self._reload_token():
                return RetryableError(
                    f"{where} refused the token: {status} {message}. Its file has a new "
                    "token: trying again with it",
                    status=status,
                )
            has_token = bool(self.config["api_token"])
            problem = "refused the token" if has_token else "needs a token (none is configured)"
            return SinkPausedError(
                f"{where} {problem}: {status} {message}. The token needs the {action} "
                "permission on that database",
                status=status,
            )
        if status == 429:
            return RetryableError(
                f"{where} is rate limiting: {status} {message}",
                status=status,
                retry_after=_retry_after(response.headers.get("retry-after")),
            )
        if status >= 500 or status in (408, 502, 503, 504):
            return RetryableError(
                f"{where} failed: {status} {message}",
                status=status,
                retry_after=_retry_after(response.headers.get("retry-after")),
            )
        if status == 404:
            return PermanentError(
                f"{where} answered 404 {message}: check the database name in api_url",
                status=status,
            )
        if status in (400, 413, 422):
            return RejectedError(f"{where} rejected rows: {status} {message}", status=status)
        return PermanentError(f"{where} answered {status} {message}", status=status)


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [DatasetteSink]
