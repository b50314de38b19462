"""``eventsink send``: read events from files or standard input and deliver them."""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import click
from orjson import dumps

from ..builder import build
from ..config import Settings
from ..exceptions import ConfigError, EventError
from ..outbox import Outbox
from ..outbox.deferred import DeferredOutbox
from ..pipeline.pipeline import Pipeline, default_outbox_path
from ..plugins import make_plugin_manager
from ..sink import Sink
from .common import (
    Outcomes,
    build_config,
    close,
    config_error,
    deliver,
    output_options,
    setup_logging,
    sink_options,
    start_runner,
    usage_error,
)
from .interrupt import EXIT_DEAD_LETTERS, EXIT_FAILURE, Interrupted, stop_on_interrupt
from .reader import FORMATS, Malformed, Record, StableIds, read_records

logger = logging.getLogger("eventsink")

SHOWN_MALFORMED = 20  # malformed inputs listed one by one; the rest are counted


class Counts:
    """What a run has done so far, read by the progress reporter from another thread."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.read = 0
        self.malformed = 0
        self.started = time.monotonic()

    @property
    def sent(self) -> int:
        return sum(lane.stats.delivered for lane in self.pipeline.lanes.values())

    @property
    def failed(self) -> int:
        return sum(lane.stats.dead_lettered for lane in self.pipeline.lanes.values())

    @property
    def retries(self) -> int:
        return sum(lane.stats.failed_attempts for lane in self.pipeline.lanes.values())

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.sent / elapsed if elapsed > 0 else 0.0


class Reporter:
    """A rich progress bar on a terminal, or a plain line every ``interval`` seconds."""

    def __init__(
        self, counts: Counts, *, tty: bool, quiet: bool = False, interval: float = 2.0
    ) -> None:
        self.counts = counts
        self.tty = tty
        self.quiet = quiet
        self.interval = 0.1 if tty else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eventsink-progress", daemon=True)
        self.progress: Any = None
        self.console: Any = None
        if tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.console = Console(stderr=True)
            self.progress = Progress(
                TextColumn("[bold]sending"),
                BarColumn(),
                TextColumn("{task.fields[line]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.progress.add_task("send", total=None, line="")

    def __enter__(self) -> Reporter:
        if self.progress is not None:
            self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.progress is not None:
            self.progress.stop()

    def line(self) -> str:
        counts = self.counts
        failed = counts.failed
        parts = [
            f"read {counts.read:,}",
            f"sent {counts.sent:,}",
            f"failed {failed:,}" if failed or self.tty else f"failed {failed}",
            f"{counts.rate():,.0f} events/s",
        ]
        if counts.retries:
            parts.append(f"{counts.retries:,} retried attempts")
        return "  ".join(parts)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.progress is not None:
                self.progress.update(
                    self.task,
                    completed=self.counts.sent + self.counts.failed,
                    total=max(self.counts.read, 1),
                    line=self.line(),
                )
            elif not self.quiet:
                click.echo(f"eventsink: {self.line()}", err=True)


def _open_inputs(files: tuple[str, ...], quiet: bool) -> Iterator[tuple[str, BinaryIO]]:
    for name in files or ("-",):
        if name == "-":
            if sys.stdin.isatty() and not quiet:
                click.echo(
                    "eventsink: reading events from the terminal, one JSON object a line; "
                    "end with Ctrl-D (Ctrl-C to stop)",
                    err=True,
                )
            yield "<stdin>", sys.stdin.buffer
            continue
        try:
            stream = open(name, "rb")  # noqa: SIM115  # closed below, after reading
        except OSError as error:
            raise usage_error(click.FileError(name, error.strerror)) from None
        with stream:
            yield name, stream


def _is_regular_file(name: str) -> bool:
    try:
        return name != "-" and stat.S_ISREG(os.stat(name).st_mode)
    except OSError:
        return False


def _straight_from_files(settings: Settings, sinks: Mapping[str, Sink]) -> Outbox | None:
    """The outbox of a run whose input is files: a :class:`DeferredOutbox` when every sink
    is local (the files are the events' durable record), else the configured one."""
    if settings.outbox == ":memory:" or settings.overflow != "block":
        return None
    if not sinks or not all(sink.local for sink in sinks.values()):
        return None
    path = Path(settings.outbox or default_outbox_path()).expanduser()
    return DeferredOutbox(path, durability=settings.durability)


def _default_table(name: str) -> str:
    return "events" if name == "<stdin>" else Path(name).stem or "events"


EXAMPLES = """
\b
Examples:
  eventsink send events.jsonl && datasette events.db
  cat events.jsonl | eventsink send --table clicks
  eventsink send signups.csv orders.json --table-field type
  eventsink send events.jsonl --sink datasette -o alter=true \\
      -o api_url=https://example.com/data/-/create -o api_token='{"$env": "DS_TOKEN"}'
  eventsink send events.jsonl --config eventsink.yaml --timeout 60
"""


@click.command(epilog=EXAMPLES)
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option(
    "-t",
    "--table",
    metavar="NAME",
    help="Destination table; default: the file's name without extension ('events' for stdin).",
)
@click.option(
    "--table-field",
    metavar="FIELD",
    help="Take each event's table from this field (removed from the data); events without "
    "it go to --table.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="Input format; auto: .csv is CSV, a file starting with '[' a JSON array, else JSON lines.",
)
@click.option(
    "--no-detect-types",
    is_flag=True,
    help="Keep CSV values as text (by default 12 and 1.5 become numbers; 007 stays text).",
)
@sink_options
@click.option(
    "--timeout",
    type=float,
    metavar="SECONDS",
    help="Stop waiting for delivery after this long; what is left stays in the outbox. "
    "Default: wait until every event is delivered or dead-lettered.",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False),
    help="Also write malformed input lines to this file, to fix and send again.",
)
@click.option(
    "--via-outbox",
    is_flag=True,
    help="Store every event in the outbox before delivering it, even from a file into a local "
    "sink (which by default is delivered straight from the file).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on standard error; default: when it is a terminal.",
)
@output_options
def send(
    files: tuple[str, ...],
    table: str | None,
    table_field: str | None,
    fmt: str,
    no_detect_types: bool,
    sink: str | None,
    options: tuple[str, ...],
    config_file: str | None,
    outbox: str | None,
    timeout: float | None,
    rejects: str | None,
    via_outbox: bool,
    progress: bool | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Read events from FILES (or '-' for standard input) and deliver them.

    Input is JSON lines, a JSON array of objects, or CSV with a header. Each object becomes
    one event (a row: id, instance, created, then its fields). A malformed line is reported
    with its line number and set aside; the rest is delivered.

    With no --sink and no --config, events go to the sqlite sink: a local events.db, one table
    per --table, ready for 'datasette events.db'.

    Events read from a file get ids that are the same each time the unchanged file is read,
    so sending it again stores no duplicate. From files into a local sink (sqlite), events
    are delivered straight from the file, their durable record: only events whose delivery
    fails, or that are left when the run is stopped, are stored in the outbox. If the run is
    killed, run it again. From standard input or to a remote sink, every event passes through
    the shared durable outbox first (--outbox to choose another file, --via-outbox to always):
    the next 'eventsink send' to the same destination delivers what a run left.

    Exit status: 0 all delivered; 1 some events left undelivered (--timeout, a paused sink;
    see 'eventsink status'); 2 bad usage or configuration; 3 some events were set aside
    (dead-lettered, or malformed input), everything else was delivered; 130 interrupted.
    """
    config = build_config(config_file, sink, options, outbox)
    tty = (sys.stderr.isatty() and not quiet) if progress is None else progress
    pm = make_plugin_manager()
    outcomes = Outcomes()
    pm.register(outcomes)
    from_files = bool(files) and all(_is_regular_file(name) for name in files)
    try:
        pipeline = build(
            config,
            entry_point="send",
            pm=pm,
            outbox=_straight_from_files if from_files and not via_outbox else None,
        )
    except ConfigError as error:
        raise config_error(error) from None
    settings = pipeline.settings
    counts = Counts(pipeline)
    reporter = Reporter(counts, tty=tty, quiet=quiet)
    setup_logging(verbose, reporter.console, quiet=quiet)
    if isinstance(pipeline.outbox, DeferredOutbox):
        logger.info(
            "eventsink: delivering straight from the file(s), their durable record; events "
            "that fail or are left undelivered are stored in the outbox %s",
            pipeline.outbox.path,
        )
    running = start_runner(pipeline)
    restored = sum(pipeline._restored.values())
    tables: Counter[str] = Counter()
    malformed: list[Malformed] = []
    reject_file = open(rejects, "wb") if rejects else None  # noqa: SIM115
    summary = _Summary(counts, settings, pipeline, tables, malformed, outcomes, restored, quiet)
    try:
        with stop_on_interrupt(running), reporter:
            for name, stream in _open_inputs(files, quiet):
                default = table or _default_table(name)
                stable_id = StableIds.of(stream)
                items = read_records(stream, name, fmt, detect_types=not no_detect_types)
                for position, item in enumerate(items):
                    if type(item) is Record:
                        if stable_id is not None and item.event_id is None:
                            item.event_id = stable_id(position)
                        try:
                            _write(pipeline, item, default, table, table_field, tables)
                        except EventError as error:
                            bad = Malformed(name, item.where, str(error), _text_of(item))
                            _set_aside(bad, malformed, counts, reporter, reject_file)
                    else:
                        _set_aside(item, malformed, counts, reporter, reject_file)  # type: ignore[arg-type]
                    counts.read += 1
            deliver(running, timeout)
    except Interrupted:
        summary.show(left=0, interrupted=True)
        raise
    except BaseException:
        close(running)
        raise
    finally:
        if reject_file is not None:
            reject_file.close()
    left = close(running)
    summary.show(left=left, interrupted=False)
    if left:
        sys.exit(EXIT_FAILURE)
    if counts.failed or malformed:
        sys.exit(EXIT_DEAD_LETTERS)


def _write(
    pipeline: Pipeline,
    record: Record,
    default: str,
    table: str | None,
    table_field: str | None,
    tables: Counter[str],
) -> None:
    data = record.data
    destination = table or record.table or default
    if table_field is not None and table_field in data:
        data = dict(data)
        value = data.pop(table_field)
        if isinstance(value, str) and value:
            destination = value
    pipeline.write(destination, data, created=record.created, event_id=record.event_id)
    tables[destination] += 1


def _set_aside(
    item: Malformed,
    malformed: list[Malformed],
    counts: Counts,
    reporter: Reporter,
    reject_file: BinaryIO | None,
) -> None:
    counts.malformed += 1
    malformed.append(item)
    if len(malformed) <= SHOWN_MALFORMED:
        message = f"{item.source}, {item.where}: {item.reason}; set aside"
        if reporter.console is not None:
            reporter.console.print(message, style="yellow", markup=False, highlight=False)
        else:
            click.echo(f"eventsink: {message}", err=True)
    if reject_file is not None and item.text:
        reject_file.write(item.text + b"\n")


class _Summary:
    """What ``send`` prints at the end: on standard output, unless ``--quiet``."""

    def __init__(
        self,
        counts: Counts,
        settings: Any,
        pipeline: Pipeline,
        tables: Counter[str],
        malformed: list[Malformed],
        outcomes: Outcomes,
        restored: int,
        quiet: bool,
    ) -> None:
        self.counts, self.settings, self.pipeline = counts, settings, pipeline
        self.tables, self.malformed, self.outcomes = tables, malformed, outcomes
        self.restored, self.quiet = restored, quiet

    def show(self, left: int, interrupted: bool) -> None:
        counts, malformed = self.counts, self.malformed
        elapsed = time.monotonic() - counts.started
        if len(malformed) > SHOWN_MALFORMED and not self.quiet:
            click.echo(
                f"eventsink: ... and {len(malformed) - SHOWN_MALFORMED:,} more malformed",
                err=True,
            )
        if self.quiet:
            return
        events = counts.read - counts.malformed
        click.echo(
            f"Read {events:,} event(s)"
            + (f", {counts.malformed:,} malformed" if malformed else "")
            + "."
        )
        for name, lane in self.pipeline.lanes.items():
            click.echo(f"Sent {lane.stats.delivered:,} to {name}")
        if self.restored:
            click.echo(f"  (including {self.restored:,} left in the outbox by an earlier run)")
        if self.tables:
            listed = ", ".join(f"{name} {count:,}" for name, count in self.tables.most_common(10))
            more = f" and {len(self.tables) - 10} more" if len(self.tables) > 10 else ""
            click.echo(f"  events read by table: {listed}{more}")
        rate = counts.sent / elapsed if elapsed > 0 else 0.0
        click.echo(f"Took {elapsed:.2f}s ({rate:,.0f} events/s).")
        for (sink, message), count in self.outcomes.dead.most_common():
            click.echo(f"Dead-lettered {count:,} for {sink}: {message}")
        if counts.failed:
            click.echo(
                "See them with 'eventsink status'; after fixing the cause: 'eventsink replay'."
            )
        if left:
            click.echo(
                f"{left:,} event(s) not delivered yet are kept in the outbox; the next "
                "'eventsink send' to the same destination delivers them."
            )
        sinks = self.settings.sinks
        sqlite_paths = [config.options["path"] for config in sinks if config.type == "sqlite"]
        if sqlite_paths and not (counts.failed or left or interrupted):
            click.echo(f"Browse them with: datasette {sqlite_paths[0]}")


def _text_of(record: Record) -> bytes:
    """The input of a refused record for the rejects file: its line, else its data as JSON."""
    if record.raw:
        return record.raw.rstrip(b"\r\n")
    try:
        return dumps(record.data)
    except TypeError:  # what write() refused may not serialise either (nesting, surrogates)
        return b""
