"""The CSV sink passes eventsink's sink contract (run: pytest, after pip install -e .)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from eventsink_csv_sink import CsvSink

from eventsink import ConfigError
from eventsink.testing import SinkContract


class TestCsvSinkContract(SinkContract):
    """The CSV sink keeps every rule of the sink contract."""

    @pytest.fixture
    def make_sink(self, tmp_path: Path):
        return lambda: CsvSink(path=str(tmp_path / "out" / "events.csv"))

    @pytest.fixture
    def read_stored(self, tmp_path: Path):
        path = tmp_path / "out" / "events.csv"

        def read() -> list[dict]:
            if not path.exists():
                return []
            with path.open(newline="") as file:
                return [{**row, "data": json.loads(row["data"])} for row in csv.DictReader(file)]

        return read

    @pytest.fixture
    def failure_cases(self, tmp_path: Path):
        (tmp_path / "a-file").write_text("")
        # A path below a regular file can never be created.
        return {
            "unwritable path": (
                lambda: CsvSink(path=str(tmp_path / "a-file" / "x.csv")),
                ConfigError,
            )
        }
