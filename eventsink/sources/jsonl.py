"""The ``jsonl`` source: the records of a JSON-lines file, resumable by byte offset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import orjson

from eventsink.config import reveal
from eventsink.exceptions import ConfigError, PermanentError
from eventsink.hookspecs import hookimpl
from eventsink.pull.source import DataSource

CONFIG = {
    "title": "JSON lines file",
    "params": [
        {
            "name": "path",
            "title": "File",
            "placeholder": "records.jsonl",
            "help": "The file to read, one JSON object per line (blank lines are skipped).",
            "required": True,
        },
    ],
}


class JSONLSource(DataSource):
    """Read a JSON-lines file from the start, or from where the last committed run stopped.

    The checkpoint is the byte offset and line number after the last committed line, so a
    file that grows between runs is read from where it ended (only the new lines).
    """

    name = "jsonl"

    def __init__(self, source: dict[str, Any], options: dict[str, Any] | None = None) -> None:
        super().__init__(source, options)
        self.path = Path(reveal(self.source["path"])).expanduser()
        self._file: IO[bytes] | None = None
        self._line = 0
        self._size = 0

    def identity(self) -> str:
        return f"{self.name}:{self.destination}:{self.path.resolve()}"

    def _open(self) -> IO[bytes]:
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115  # kept open until close()
                self._size = os.fstat(self._file.fileno()).st_size
            except OSError as error:
                raise ConfigError(
                    f"config key 'path': cannot read {str(self.path)!r}: {error.strerror}",
                    key="path",
                ) from None
            resume = self.resume_state("file")
            offset = int(resume.get("offset", 0))
            if offset > self._size:
                raise PermanentError(
                    f"{str(self.path)!r} is shorter ({self._size} bytes) than the checkpoint "
                    f"({offset} bytes): it was replaced; pull again with --restart"
                )
            self._file.seek(offset)
            self._line = int(resume.get("line", 0))
            if offset:
                self.log(f"resuming at line {self._line + 1} (byte {offset})")
        return self._file

    def read(self, n: int | None = None) -> list[dict[str, Any]] | None:
        file = self._open()
        limit = n or 1000
        records: list[dict[str, Any]] = []
        while len(records) < limit:
            start = file.tell()
            line = file.readline()
            if not line:
                break
            if not line.endswith(b"\n") and file.tell() >= os.fstat(file.fileno()).st_size:
                file.seek(start)  # a line still being written: leave it for the next run
                break
            self._line += 1
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise PermanentError(f"{self.path}:{self._line}: not JSON ({error})") from None
            if not isinstance(record, dict):
                raise PermanentError(f"{self.path}:{self._line}: not a JSON object")
            records.append(record)
        if not records and file.tell() == start:
            return None
        self.state("file", {"offset": file.tell(), "line": self._line})
        self.progress(file.tell(), self._size or None)
        return records

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@hookimpl
def eventsink_register_sources() -> list[type]:
    return [JSONLSource]
