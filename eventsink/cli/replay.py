"""``eventsink replay``: move dead letters back into the outbox, and deliver them if asked."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ..builder import build
from ..exceptions import ConfigError
from ..ids import parse_ulid_or_time
from ..outbox.sqlite import SQLiteOutbox
from ..plugins import make_plugin_manager
from .common import (
    Outcomes,
    build_config,
    close,
    config_error,
    deliver,
    outbox_path,
    output_options,
    setup_logging,
    start_runner,
)
from .interrupt import EXIT_DEAD_LETTERS, EXIT_FAILURE, Interrupted, stop_on_interrupt

DEFAULT_TIMEOUT = 60.0  # seconds replay --to waits for delivery before it stops


def _matches(name: str, wanted: str | None) -> bool:
    """``--sink`` picks an outbox sink by its full name or by its type (``sqlite``)."""
    return wanted is None or name == wanted or name.startswith(wanted + " ")


async def _move(path: str, wanted: str | None, since: str | None) -> dict[str, int]:
    outbox = SQLiteOutbox(path)
    try:
        await outbox.open([])
        names = [name for name in await outbox.backlog() if _matches(name, wanted)]
        moved: dict[str, int] = {}
        for name in names:
            for sink, count in (await outbox.replay(destination=name, since=since)).items():
                moved[sink] = moved.get(sink, 0) + count
        return moved
    finally:
        await outbox.close()


@click.command(
    epilog="""
\b
Examples:
  eventsink replay                      # all dead letters, for running processes
  eventsink replay --sink sqlite --since 2026-03-01T00:00:00Z
  eventsink replay --to sqlite -o path=events.db     # and deliver them now
  eventsink replay --config eventsink.yaml --timeout 60
"""
)
@click.option(
    "--since",
    metavar="ULID|TIME",
    help="Only events whose id is at or after this ULID, or made at or after this ISO time.",
)
@click.option(
    "--sink",
    "wanted",
    metavar="NAME",
    help="Only this sink's dead letters: its name as 'eventsink status' shows it, or its type.",
)
@click.option(
    "--dead",
    is_flag=True,
    default=True,
    help="Replay dead letters (the default and only kind: the outbox keeps no delivered events).",
)
@click.option(
    "--to",
    "sink_type",
    metavar="TYPE",
    help="Deliver now with this sink (and -o options) instead of leaving it to a running process.",
)
@click.option(
    "-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="Options of --to."
)
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Deliver now with the sinks of this YAML or JSON configuration.",
)
@click.option(
    "--outbox",
    type=click.Path(dir_okay=False),
    help="Outbox file; default: the shared outbox in the user data directory.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="When delivering now, stop waiting after this long (a receiver that stays down is "
    "not retried forever); what is left stays in the outbox.",
)
@output_options
def replay(
    since: str | None,
    wanted: str | None,
    dead: bool,
    sink_type: str | None,
    options: tuple[str, ...],
    config_file: str | None,
    outbox: str | None,
    timeout: float,
    verbose: int,
    quiet: bool,
) -> None:
    """Re-deliver dead letters: move them back into the outbox.

    A process delivering from the same outbox (the Datasette plugin, a Client, another
    'eventsink send') picks them up within a few seconds. If none is running, give the sink
    with --to/-o or --config and replay delivers them now, with the same destination naming
    as 'eventsink send', then reports what it delivered.

    Exit status: 0 done; 1 some events left undelivered (--timeout, a paused sink);
    2 bad usage or configuration; 3 some events were dead-lettered again; 130 interrupted.
    """
    if not dead:
        raise click.UsageError("only dead letters can be replayed: delivered events are not kept")
    try:
        bound = parse_ulid_or_time(since) if since else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--since'") from None
    setup_logging(verbose, quiet=quiet)
    echo = _quiet_echo if quiet else click.echo
    deliver = bool(sink_type or config_file or options)
    config = build_config(config_file, sink_type, options, outbox) if deliver else {}
    if outbox:
        config["outbox"] = outbox
    path = outbox_path(config)
    if not deliver:
        if not os.path.exists(path):
            echo(f"No outbox at {path}: nothing to replay.")
            return
        moved = asyncio.run(_move(path, wanted, bound))
        _report_moved(moved, echo)
        if moved:
            echo(
                "A running eventsink process delivers them within a few seconds. If none is "
                "running, deliver them now: eventsink replay --to TYPE [-o KEY=VALUE ...]"
            )
        return
    _deliver_now(config, wanted, bound, timeout, echo)


def _quiet_echo(message: str) -> None:
    """What ``-q`` leaves of the report: nothing."""


def _report_moved(moved: dict[str, int], echo: Callable[[str], None]) -> None:
    if not moved:
        echo("No dead letters matched.")
    for name, count in sorted(moved.items()):
        echo(f"Moved {count:,} dead letter(s) of {name} back into the outbox.")


def _deliver_now(
    config: dict[str, Any],
    wanted: str | None,
    since: str | None,
    timeout: float,
    echo: Callable[[str], None],
) -> None:
    pm = make_plugin_manager()
    outcomes = Outcomes()
    pm.register(outcomes)
    try:
        pipeline = build(config, entry_point="cli", pm=pm)
    except ConfigError as error:
        raise config_error(error) from None
    running = start_runner(pipeline)
    moved: dict[str, int] = {}
    try:
        with stop_on_interrupt(running):
            for name in pipeline.lanes:
                if _matches(name, wanted):
                    moved.update(running.run(pipeline.replay(sink=name, since=since)))
            deliver(running, timeout)
    except Interrupted:
        raise
    except BaseException:
        close(running)
        raise
    left = close(running)
    _report_moved(moved, echo)
    for name, lane in pipeline.lanes.items():
        echo(f"Delivered {lane.stats.delivered:,} to {name}.")
    for (sink, message), count in outcomes.dead.most_common():
        echo(f"Dead-lettered again: {count:,} for {sink}: {message}")
    if left:
        echo(f"{left:,} event(s) not delivered yet are kept in the outbox.")
    if left:
        sys.exit(EXIT_FAILURE)
    if outcomes.dead:
        sys.exit(EXIT_DEAD_LETTERS)
