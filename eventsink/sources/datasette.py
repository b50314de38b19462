"""The ``datasette`` source: an incremental copy of a table from a Datasette instance.

It pages through ``/<db>/<table>.json`` in primary-key order (``rowid`` for tables without
one) with Datasette's keyset pagination (``_next``). The checkpoint is the ``_next`` token of
the last committed row, so a later pull of the same URL asks only for rows after it: rows
added since (with larger keys) are copied, nothing else is read again. Rows changed in place
or inserted below the last key are not seen; pull with ``--restart`` to copy everything again
(each row keeps its event id, so ULID-keyed sinks ignore what they already have).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

from eventsink.config import reveal
from eventsink.exceptions import ConfigError, PermanentError, RetryableError
from eventsink.hookspecs import hookimpl
from eventsink.pull.source import DataSource

CONFIG = {
    "title": "Datasette table (incremental copy)",
    "params": [
        {
            "name": "url",
            "title": "Table URL",
            "placeholder": "https://example.com/db/table",
            "help": "The table's page; query filters are kept (e.g. ?status=open).",
            "required": True,
        },
        {
            "name": "token",
            "title": "API token",
            "placeholder": "dstok_...",
            "help": "A Datasette API token for private tables (sent as a Bearer token).",
            "secret": True,
        },
        {
            "name": "page_size",
            "title": "Rows per request",
            "placeholder": "1000",
            "help": "At most the server's max_returned_rows (1000 by default).",
            "type": "int",
            "default": 1000,
        },
        {
            "name": "timeout",
            "title": "Timeout",
            "placeholder": "30",
            "help": "Seconds to wait for each response.",
            "type": "float",
            "default": 30.0,
        },
    ],
}

_RESERVED_QUERY = {"_next", "_size", "_extra", "_shape", "_labels", "_col", "_nocol"}
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def tilde_encode(text: str) -> str:
    """Datasette's tilde encoding of one key value (as in its ``_next`` tokens)."""
    out = []
    for char in text:
        if char in _SAFE:
            out.append(char)
        elif char == " ":
            out.append("+")
        else:
            out.extend(f"~{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


class DatasetteSource(DataSource):
    """Copy the rows of one Datasette table, resuming after the last copied key."""

    name = "datasette"

    def __init__(self, source: dict[str, Any], options: dict[str, Any] | None = None) -> None:
        super().__init__(source, options)
        self.json_url, self.query = self._parse_url(reveal(self.source["url"]))
        self._client: httpx.Client | None = None
        self._next: str | None = None
        self._pks: list[str] | None = None
        self._done = False
        self._started = False
        self.requests = 0

    @staticmethod
    def _parse_url(url: str) -> tuple[str, list[tuple[str, str]]]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"config key 'url' must be a Datasette table URL such as "
                f"https://example.com/db/table, not {url!r}",
                key="url",
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        for key, _ in query:
            if key in ("_sort", "_sort_desc"):
                raise ConfigError(
                    "config key 'url': remove _sort/_sort_desc; the copy pages in key order",
                    key="url",
                )
        path = parts.path.rstrip("/")
        if not path.endswith(".json"):
            path += ".json"
        netloc = parts.netloc.rpartition("@")[2]  # never keep credentials in the identity
        base = urlunsplit((parts.scheme, netloc, path, "", ""))
        return base, [(k, v) for k, v in query if k not in _RESERVED_QUERY]

    def identity(self) -> str:
        filters = "&".join(f"{k}={v}" for k, v in self.query)
        return f"{self.name}:{self.destination}:{self.json_url}?{filters}"

    def _http(self) -> httpx.Client:
        if self._client is None:
            headers = {"Accept": "application/json"}
            token = reveal(self.source["token"])
            if token:
                headers["Authorization"] = f"Bearer {token}"
            self._client = httpx.Client(headers=headers, timeout=self.source["timeout"])
        return self._client

    def _get(self, params: list[tuple[str, str]]) -> dict[str, Any]:
        self.requests += 1
        try:
            response = self._http().get(self.json_url, params=params)
        except httpx.TransportError as error:
            raise RetryableError(f"{self.json_url}: {type(error).__name__}: {error}") from None
        status = response.status_code
        if status == 429 or status >= 500:
            after = response.headers.get("Retry-After")
            raise RetryableError(
                f"{self.json_url} answered {status}",
                status=status,
                retry_after=float(after) if after and after.isdigit() else None,
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if status != 200 or not isinstance(body, dict) or body.get("ok") is False:
            detail = (body or {}).get("errors") or (body or {}).get("error") or response.text
            token = reveal(self.source["token"])
            detail = str(detail)
            if token:  # a server may echo the Authorization header: scrub, then cut
                detail = detail.replace(token, "********")
            detail = detail[:200]
            hint = " (is the token right?)" if status in (401, 403) else ""
            raise PermanentError(
                f"{self.json_url} answered {status}: {detail}{hint}", status=status
            )
        return body

    def read(self, n: int | None = None) -> list[dict[str, Any]] | None:
        if self._done:
            return None
        if not self._started:
            resume = self.resume_state("table")
            self._next = resume.get("next")
            self.loaded = int(resume.get("loaded", 0))
        size = min(n or self.source["page_size"], self.source["page_size"])
        params = [*self.query, ("_size", str(size))]
        if self._next is not None:
            params.append(("_next", self._next))
        if not self._started:
            params += [("_extra", "count"), ("_extra", "primary_keys")]
        body = self._get(params)
        if not self._started:
            self._started = True
            self._pks = list(body.get("primary_keys") or [])
            if not self._key_fields:
                self._key_fields = self._pks or ["rowid"]
            self.total = body.get("count")
            if self._next:
                self.log(f"resuming after key {self._next}")
        rows = body.get("rows") or []
        if not rows:
            self._done = True
            return None
        last_key = body.get("next") or self._token(rows[-1])
        if not body.get("next"):
            self._done = True
        self._next = last_key
        loaded = self.loaded + len(rows)
        self.state("table", {"next": last_key, "loaded": loaded})
        self.progress(loaded, max(self.total or 0, loaded) or None)
        return rows

    def _token(self, row: dict[str, Any]) -> str:
        fields = self._pks or ["rowid"]
        try:
            return ",".join(tilde_encode(str(row[field])) for field in fields)
        except KeyError as error:
            raise PermanentError(
                f"{self.json_url}: rows lack the key column {error.args[0]!r}"
            ) from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@hookimpl
def eventsink_register_sources() -> list[type]:
    return [DatasetteSource]
