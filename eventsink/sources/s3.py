"""The ``s3`` source: replay what the ``s3`` sink archived, object by object, resumably.

It lists ``{prefix}{table}/`` in key order (the sink's keys sort by partition, then by event
id), reads each ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` object and yields its rows. The
checkpoint is the last object read completely and the rows taken from the next one, so a pull
that stops resumes where it stopped. Each row keeps its archived ``id`` as ``source_id`` and,
by default, ``source_key: id`` derives the replayed event's id from it: pulling twice into a
ULID-keyed sink stores every event once.
"""

from __future__ import annotations

import gzip
import io
from typing import Any

import orjson

from eventsink.exceptions import PermanentError
from eventsink.hookspecs import hookimpl
from eventsink.pull.source import DataSource

EXTENSIONS = (".jsonl.gz", ".jsonl", ".parquet")

CONFIG = {
    "title": "Objects archived by the s3 sink",
    "params": [
        {"name": "bucket", "title": "Bucket", "help": "Bucket to read.", "required": True},
        {
            "name": "table",
            "title": "Archived table",
            "placeholder": "events",
            "help": "The archived table to replay (the first part of the key after the "
            "prefix); also the default destination.",
            "required": True,
        },
        {"name": "prefix", "title": "Prefix", "help": "Key prefix the sink wrote under.",
         "default": ""},
        {"name": "endpoint_url", "title": "Endpoint", "help": "URL of an S3-compatible server."},
        {"name": "region", "title": "Region", "help": "Region; none: AWS_REGION or us-east-1."},
        {"name": "access_key_id", "title": "Access key id", "secret": True,
         "help": "Access key id; none: the AWS environment."},
        {"name": "secret_access_key", "title": "Secret access key", "secret": True,
         "help": "Secret access key."},
        {"name": "session_token", "title": "Session token", "secret": True,
         "help": "Session token of temporary credentials."},
        {
            "name": "source_key",
            "title": "Key field(s)",
            "help": "Field(s) that identify a record; default id, the archived event id.",
            "type": "list",
            "default": ["id"],
        },
    ],
}  # fmt: skip


def rows_of(key: str, body: bytes) -> list[dict[str, Any]]:
    """The rows of one archived object, decoded by its extension."""
    if key.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(body)).to_pylist()
    if key.endswith(".gz"):
        body = gzip.decompress(body)
    return [orjson.loads(line) for line in body.splitlines() if line.strip()]


class S3Source(DataSource):
    """Read the objects of one archived table, oldest partition first."""

    name = "s3"

    def __init__(self, source: dict[str, Any], options: dict[str, Any] | None = None) -> None:
        super().__init__(source, options)
        if not self.source["destination"]:
            self.destination = self.source["table"]
        self._store: Any = None
        resume = self.resume_state("s3")
        self._after: str | None = resume.get("after")
        self._rows: list[dict[str, Any]] = []
        self._current: str | None = None
        self._offset = int(resume.get("offset", 0))
        self._keys: list[str] | None = None

    def identity(self) -> str:
        where = self.source["endpoint_url"] or "aws"
        return (
            f"{self.name}:{self.destination}:{where}/{self.source['bucket']}/"
            f"{self.source['prefix']}{self.source['table']}"
        )

    def _config(self) -> dict[str, Any]:
        config = {
            name: self.source[name]
            for name in (
                "bucket",
                "prefix",
                "endpoint_url",
                "region",
                "access_key_id",
                "secret_access_key",
                "session_token",
            )
        }
        config["timeout"] = 30.0
        return config

    def _list(self) -> list[str]:
        from eventsink.sinks.s3 import check_connection, classify, make_store

        config = self._config()
        check_connection(config)
        self._store = make_store(config)
        prefix = f"{config['prefix']}{self.source['table']}/"
        try:
            import obstore

            keys = [
                item["path"]
                for page in obstore.list(self._store, prefix)
                for item in page
                if item["path"].endswith(EXTENSIONS)
            ]
        except Exception as error:
            raise classify(error, config["bucket"], "s3:ListBucket") from None
        keys.sort()
        if self._after is not None:
            keys = [key for key in keys if key > self._after]
        if not keys and self._after is None:
            self.log(f"no archived objects under s3://{config['bucket']}/{prefix}")
        return keys

    def _load(self, key: str) -> list[dict[str, Any]]:
        import obstore

        from eventsink.sinks.s3 import classify

        try:
            body = bytes(obstore.get(self._store, key).bytes())
        except Exception as error:
            raise classify(error, self.source["bucket"], "s3:GetObject") from None
        try:
            return rows_of(key, body)
        except Exception as error:
            raise PermanentError(f"s3 object {key!r} cannot be read: {error}") from None

    def read(self, n: int | None = None) -> list[dict[str, Any]] | None:
        if self._keys is None:
            self._keys = self._list()
            self.total = len(self._keys)
        limit = n or 1000
        records: list[dict[str, Any]] = []
        while len(records) < limit:
            if self._current is None:
                if not self._keys:
                    break
                self._current = self._keys.pop(0)
                self._rows = self._load(self._current)
            take = self._rows[self._offset : self._offset + limit - len(records)]
            records.extend(take)
            self._offset += len(take)
            if self._offset >= len(self._rows):
                self._after, self._current, self._offset, self._rows = self._current, None, 0, []
        if not records:
            return None
        self.state("s3", {"after": self._after, "offset": self._offset})
        self.progress((self.total or 0) - len(self._keys), self.total or None)
        return records

    def close(self) -> None:
        self._store = None


@hookimpl
def eventsink_register_sources() -> list[type]:
    return [S3Source]
