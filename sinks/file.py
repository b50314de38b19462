"""The ``file`` sink: JSON lines appended to a file, made durable before a batch is confirmed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from eventsink.config import Option
from eventsink.event import Event
from eventsink.exceptions import ConfigError, RetryableError
from eventsink.hookspecs import hookimpl
from eventsink.sink import Sink


class FileSink(Sink):
    """Append each event as one JSON line (``Event.to_json``) to ``path``.

    Each batch is written, flushed and fsync'd before it counts as delivered, so a confirmed
    event survives a power loss. A retried batch may append lines already written by a
    crashed attempt: readers deduplicate by ``id``.
    """

    name = "file"
    max_concurrent_sends = 1  # appends to one file object
    description = "Appends events as JSON lines to a file."
    options = (
        Option("path", str, "events.jsonl", "File to append to; parent directories are made."),
        Option("fsync", bool, True, "fsync after each batch (durable, slower).", nullable=False),
    )

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.path = Path(self.config["path"]).expanduser()
        self._file: BinaryIO | None = None

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        if not config["path"]:
            raise ConfigError("config key 'path' must name a file", key="path")

    def open(self) -> None:
        self._open()

    def _open(self) -> BinaryIO:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115  # kept open until close()
        except OSError as error:
            raise ConfigError(
                f"config key 'path': cannot open {str(self.path)!r} for appending: "
                f"{error.strerror}",
                key="path",
            ) from None
        return self._file

    def send(self, batch: Sequence[Event]) -> None:
        try:
            file = self._file or self._open()
            file.write(b"".join(event.to_json() + b"\n" for event in batch))
            file.flush()
            if self.config["fsync"]:
                os.fsync(file.fileno())
        except OSError as error:
            # A full disk or a vanished mount may recover; reopen on the next attempt.
            self._close_file()
            raise RetryableError(f"cannot write to {str(self.path)!r}: {error.strerror}") from None

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_file()

    @property
    def destination(self) -> str:
        return f"file {self.path.resolve()}"

    def describe(self) -> str:
        return f"file {self.path}"


@hookimpl
def eventsink_register_sinks() -> list[type]:
    return [FileSink]
