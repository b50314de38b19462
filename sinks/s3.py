"""The ``s3`` sink: events archived as objects in an S3-compatible bucket.

Each object holds the events of one table and one hour, under a Hive-style key::

    {prefix}{table}/date=2026-12-01/hour=21/{first_id}-{last_id}.parquet

The key is made from the first and last event id of the object, so a batch sent again (a retry
after a lost response) overwrites the same object instead of adding one: delivery stays
effectively once. A send returns only once S3 has stored every object of the batch.

Batches that wait at the same time (the lane's ``concurrency`` above 1) are merged into one
object, up to ``max_object_bytes``, each waiting at most ``max_object_age`` seconds for
company; a batch larger than ``max_object_bytes`` is split into several objects. Big objects
come first from the lane's own batching: a large ``batch_limit`` and a long ``flush_interval``.

The client is obstore (Rust's ``object_store``): async, one small wheel with no dependencies,
and it reads the usual ``AWS_*`` environment variables, web identity and instance metadata when
no credentials are configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from eventsink.config import REQUIRED, ByteSize, Option, reveal
from eventsink.event import Event
from eventsink.exceptions import ConfigError, DeliveryError, RetryableError, SinkPausedError
from eventsink.hookspecs import hookimpl
from eventsink.sink import Sink

from .s3_formats import ParquetEncoder, jsonl_body

logger = logging.getLogger("eventsink")

DEFAULT_KEY = "{table}/date={date}/hour={hour}/{first_id}-{last_id}.{ext}"
KEY_FIELDS = frozenset(
    {"table", "date", "hour", "year", "month", "day", "first_id", "last_id", "ext"}
)
COMPRESSIONS = {"jsonl": ("gzip", "none"), "parquet": ("zstd", "snappy", "gzip", "none")}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]+")
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_ROW_OVERHEAD = 96  # bytes a row adds beyond its data's JSON (id, instance, created, keys)

#: Options shared by the sink and the ``s3`` pull source: where the bucket is, who we are.
CONNECTION_OPTIONS: tuple[Option, ...] = (
    Option("bucket", str, REQUIRED, "Bucket name.", nullable=False),
    Option("prefix", str, "", "Key prefix inside the bucket, e.g. 'events/'.", nullable=False),
    Option(
        "endpoint_url",
        str,
        None,
        "URL of an S3-compatible server (MinIO, R2, SeaweedFS, ...); none: AWS S3.",
    ),
    Option("region", str, None, "Region; none: AWS_REGION, or us-east-1 with endpoint_url."),
    Option("access_key_id", str, None, "Access key id; none: the AWS environment.", secret=True),
    Option("secret_access_key", str, None, "Secret access key.", secret=True),
    Option("session_token", str, None, "Session token of temporary credentials.", secret=True),
    Option("timeout", float, 30.0, "Seconds one request may take.", minimum=0.1, nullable=False),
)


def key_fields(template: str) -> list[str]:
    """The ``{names}`` a key template uses."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def key_token(value: str) -> str:
    """``value`` made safe as one path segment of an object key."""
    return _UNSAFE.sub("_", value).strip(".") or "_"


def check_connection(config: dict[str, Any]) -> None:
    """Check the options of :data:`CONNECTION_OPTIONS` together."""
    if not config["bucket"].strip():
        raise ConfigError("config key 'bucket' must name a bucket", key="bucket")
    url = config["endpoint_url"]
    if url is not None and not re.match(r"^https?://[^/]+", url):
        raise ConfigError(
            f"config key 'endpoint_url' must be an http(s):// URL, not {url!r}", key="endpoint_url"
        )
    given = [name for name in ("access_key_id", "secret_access_key") if config[name]]
    if len(given) == 1:
        missing = ({"access_key_id", "secret_access_key"} - set(given)).pop()
        raise ConfigError(
            f"config key {missing!r} is missing: give both access_key_id and secret_access_key, "
            "or neither (then the AWS environment is used)",
            key=missing,
        )


def make_store(config: dict[str, Any]) -> Any:
    """An obstore ``S3Store`` for the configured bucket, with retries left to eventsink."""
    try:
        from obstore.store import S3Store
    except ImportError:
        raise ConfigError(
            "the s3 sink needs obstore: pip install 'eventsink[s3]'", key="bucket"
        ) from None
    options: dict[str, Any] = {}
    url = config["endpoint_url"]
    if url:
        options["endpoint"] = url
        options["region"] = config["region"] or "us-east-1"
    elif config["region"]:
        options["region"] = config["region"]
    for name in ("access_key_id", "secret_access_key", "session_token"):
        if config[name]:
            options[name if name != "session_token" else "token"] = reveal(config[name])
    timeout = timedelta(seconds=config["timeout"])
    provider = _profile_provider(config)
    if provider is not None:
        options["credential_provider"] = provider
    return S3Store(
        config["bucket"],
        **options,
        client_options={
            "allow_http": bool(url and url.startswith("http://")),
            "timeout": timeout,
            "connect_timeout": min(timeout, timedelta(seconds=10)),
        },
        # The lane backs off and retries; a store that retried inside one send would hide an
        # outage from the status page and hold the batch for minutes.
        retry_config={"max_retries": 0, "retry_timeout": timeout},
    )


def _profile_provider(config: dict[str, Any]) -> Any:
    """Credentials of the ``AWS_PROFILE`` profile (``~/.aws``), read through boto3.

    obstore itself reads the ``AWS_*`` variables, web identity and instance metadata, but not
    profile files; boto3 does, and is only needed (and imported) when a profile is named.
    """
    if config["access_key_id"] or not os.environ.get("AWS_PROFILE"):
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        raise ConfigError(
            "AWS_PROFILE is set and no access_key_id is configured: reading an AWS profile "
            "needs boto3 (pip install boto3), or give access_key_id and secret_access_key",
            key="access_key_id",
        ) from None
    return Boto3CredentialProvider(boto3.Session())


def classify(error: Exception, bucket: str, action: str) -> DeliveryError:
    """Map an obstore error to the delivery error that steers the lane.

    The message names the bucket, the S3 error code and, for a refusal, the permission the
    credentials need; it never includes a credential.
    """
    from obstore import exceptions as errors

    text = str(error)
    status_match = _STATUS.search(text)
    status = int(status_match.group(1)) if status_match else None
    code_match = _CODE.search(text)
    code = code_match.group(1) if code_match else None
    where = f"bucket {bucket!r}"
    said = f" ({status} {code})" if status and code else f" ({status})" if status else ""
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return SinkPausedError(
            f"S3 refused the credentials for {where}{said}: check access_key_id, "
            "secret_access_key and session_token",
            status=status,
        )
    if isinstance(error, (errors.PermissionDeniedError, errors.UnauthenticatedError)) or status in (
        401,
        403,
    ):
        return SinkPausedError(
            f"S3 denied {action} on {where}{said}: the credentials need the {action} permission "
            f"on arn:aws:s3:::{bucket}/*",
            status=status,
        )
    if code == "NoSuchBucket" or (isinstance(error, errors.NotFoundError) and status is None):
        return SinkPausedError(f"{where} does not exist{said}", status=status)
    if status is None or status >= 500 or status in (408, 429) or code == "SlowDown":
        # obstore does not hand back response headers, so a Retry-After cannot be read here;
        # throttling waits at least a second, 5xx and connection errors the lane's backoff.
        throttled = status in (429, 503) or code == "SlowDown"
        reason = said or f": {_first_line(text)}"
        return RetryableError(
            f"S3 {action} on {where} failed{reason}; retrying",
            status=status,
            retry_after=1.0 if throttled else None,
        )
    # Any other 4xx (a wrong region, a malformed bucket name): no retry of this batch can
    # succeed, nor any other; pause and keep every event until a person fixes the config.
    return SinkPausedError(f"S3 rejected {action} on {where}{said}", status=status)


def _without_userinfo(url: str | None) -> str | None:
    return re.sub(r"//[^/@]*@", "//", url) if url else url


def _first_line(text: str) -> str:
    line = text.split("\n", 1)[0]  # obstore's first line: "<store> error: <request> in <t> - why"
    return line.rsplit(" - ", 1)[-1][:200].strip()


def partition_of(event: Event) -> tuple[str, str]:
    """The (table, ``YYYY-MM-DDTHH`` in UTC) an event is archived under."""
    created = event.created
    if created.endswith(("+00:00", "Z")):
        return event.table, created[:13]
    try:
        moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return event.table, "1970-01-01T00"
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return event.table, moment.strftime("%Y-%m-%dT%H")


@dataclass
class _Pending:
    """Events of one partition waiting to become an object, and the sends awaiting it."""

    events: list[Event] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    size: int = 0
    due: bool = False
    timer: asyncio.TimerHandle | None = None


class S3Sink(Sink):
    """Archive each batch as objects in an S3 bucket, one per table and hour."""

    name = "s3"
    description = "Archives events as JSON-lines or Parquet objects in an S3-compatible bucket."
    # Overlapping sends are how batches merge into one object; the store is safe to share.
    max_concurrent_sends = None
    options = (
        *CONNECTION_OPTIONS,
        Option("format", str, "jsonl", "Object format.", choices=("jsonl", "parquet")),
        Option(
            "compression",
            str,
            None,
            "jsonl: gzip or none; parquet: zstd, snappy, gzip or none; none: gzip for jsonl, "
            "zstd for parquet.",
        ),
        Option(
            "key",
            str,
            DEFAULT_KEY,
            "Object key template after the prefix; fields {table} {date} {hour} {year} "
            "{month} {day} {first_id} {last_id} {ext}; must use {first_id} and {last_id}.",
            nullable=False,
        ),
        Option(
            "max_object_bytes",
            ByteSize,
            ByteSize(64 * 10**6),
            "Largest object (uncompressed estimate); bigger batches are split.",
            minimum=1024,
            nullable=False,
        ),
        Option(
            "max_object_age",
            float,
            0.0,
            "Seconds a batch may wait for other batches to share its object (with concurrency "
            "above 1); 0: merge only batches that wait while an object is being written.",
            minimum=0,
            nullable=False,
        ),
    )

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._store: Any = None
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._writing: dict[tuple[str, str], asyncio.Task[None]] = {}
        fmt = self.config["format"]
        self.compression = self.config["compression"] or COMPRESSIONS[fmt][0]
        self.extension = {"parquet": "parquet", "jsonl": "jsonl"}[fmt]
        if fmt == "jsonl" and self.compression == "gzip":
            self.extension = "jsonl.gz"
        self._parquet: ParquetEncoder | None = None

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        check_connection(config)
        fmt, compression = config["format"], config["compression"]
        if compression is not None and compression not in COMPRESSIONS[fmt]:
            raise ConfigError(
                f"config key 'compression' must be one of {', '.join(COMPRESSIONS[fmt])} for "
                f"format {fmt!r}, not {compression!r}",
                key="compression",
            )
        try:
            fields = key_fields(config["key"])
        except ValueError as error:
            raise ConfigError(f"config key 'key': {error}", key="key") from None
        unknown = set(fields) - KEY_FIELDS
        if unknown:
            raise ConfigError(
                f"config key 'key' uses {', '.join(sorted(unknown))}; known fields: "
                f"{', '.join(sorted(KEY_FIELDS))}",
                key="key",
            )
        if not {"first_id", "last_id"} <= set(fields):
            raise ConfigError(
                "config key 'key' must use {first_id} and {last_id}: they make a retried batch "
                "overwrite its own object and keep two batches from overwriting each other",
                key="key",
            )

    async def open(self) -> None:
        if self.config["format"] == "parquet" and self._parquet is None:
            try:
                self._parquet = ParquetEncoder(self.compression)
            except ImportError:
                raise ConfigError(
                    "config key 'format': parquet needs pyarrow: pip install 'eventsink[s3]'",
                    key="format",
                ) from None
        if self._store is None:
            self._store = make_store(self.config)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, batch: Sequence[Event]) -> None:
        if self._store is None:
            await self.open()
        groups: dict[tuple[str, str], list[Event]] = {}
        for event in batch:
            groups.setdefault(partition_of(event), []).append(event)
        waiting = [self._add(key, events) for key, events in groups.items()]
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _add(self, key: tuple[str, str], events: list[Event]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
        pending.events.extend(events)
        pending.size += sum(len(event.data_json()) + _ROW_OVERHEAD for event in events)
        waiter: asyncio.Future[None] = loop.create_future()
        pending.waiters.append(waiter)
        age = self.config["max_object_age"]
        if pending.size >= self.config["max_object_bytes"] or age == 0:
            self._due(key)
        elif pending.timer is None:
            pending.timer = loop.call_later(age, self._due, key)
        return waiter

    def _due(self, key: tuple[str, str]) -> None:
        """Write the partition's pending events now, or right after its write in flight."""
        pending = self._pending.get(key)
        if pending is None:
            return
        if key in self._writing:
            pending.due = True
            return
        del self._pending[key]
        if pending.timer is not None:
            pending.timer.cancel()
        self._writing[key] = asyncio.ensure_future(self._write(key, pending))

    async def _write(self, key: tuple[str, str], pending: _Pending) -> None:
        outcome: BaseException | None = None
        try:
            await self._put_objects(key, pending.events)
        except BaseException as error:  # every waiting send learns the outcome, even a cancel
            outcome = error
        finally:
            del self._writing[key]
            following = self._pending.get(key)
            if following is not None and following.due:
                self._due(key)
            for waiter in pending.waiters:
                if waiter.done():
                    continue
                if outcome is None:
                    waiter.set_result(None)
                elif isinstance(outcome, asyncio.CancelledError):
                    waiter.cancel()
                else:
                    waiter.set_exception(outcome)
        if isinstance(outcome, asyncio.CancelledError):
            raise outcome

    async def _put_objects(self, key: tuple[str, str], events: list[Event]) -> None:
        import obstore

        unique = sorted({event.id: event for event in events}.items())
        chunks: list[list[Event]] = [[]]
        size = 0
        limit = self.config["max_object_bytes"]
        for _, event in unique:
            row = len(event.data_json()) + _ROW_OVERHEAD
            if chunks[-1] and size + row > limit:
                chunks.append([])
                size = 0
            chunks[-1].append(event)
            size += row
        for chunk in chunks:
            path = self.object_key(key, chunk[0].id, chunk[-1].id)
            body = await asyncio.to_thread(self._encode, key[0], chunk)
            started = time.perf_counter()
            try:
                await obstore.put_async(self._store, path, body)
            except Exception as error:
                raise classify(error, self.config["bucket"], "s3:PutObject") from None
            logger.debug(
                "eventsink s3: wrote %s (%d events, %d bytes) in %.3fs",
                path,
                len(chunk),
                len(body),
                time.perf_counter() - started,
            )

    def _encode(self, table: str, events: list[Event]) -> bytes:
        if self._parquet is not None:
            return self._parquet.body(table, events)
        return jsonl_body(events, self.compression)

    def object_key(self, partition: tuple[str, str], first_id: str, last_id: str) -> str:
        """The key of the object holding ``first_id``..``last_id`` of one partition."""
        table, hour = partition
        date = hour[:10]
        return self.config["prefix"] + self.config["key"].format(
            table=key_token(table),
            date=date,
            hour=hour[11:13],
            year=date[:4],
            month=date[5:7],
            day=date[8:10],
            first_id=first_id,
            last_id=last_id,
            ext=self.extension,
        )

    async def close(self) -> None:
        for key in list(self._pending):  # nothing waits for company at shutdown
            self._due(key)
        if self._writing:
            await asyncio.gather(*self._writing.values(), return_exceptions=True)
        self._store = None

    @property
    def destination(self) -> str:
        # The bucket and prefix say where; format, key template and sizes only say how, and
        # changing them must not orphan the events pending for this archive.
        where = _without_userinfo(self.config["endpoint_url"]) or "aws"
        return f"s3 {where} {self.config['bucket']}/{self.config['prefix']}"

    def describe(self) -> str:
        return self.destination


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [S3Sink]
