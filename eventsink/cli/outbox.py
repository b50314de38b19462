"""``eventsink outbox``: move or drop the events pending for one destination, on purpose.

Events in the outbox belong to a destination (``sqlite /home/ada/a.db``), and only a process
whose sink has that destination delivers them. When nothing will deliver them any more (the
database moved, a receiver was retired), ``eventsink status`` says so, and these commands give
them to another destination or delete them, after asking.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import click

from ..outbox.sqlite import SQLiteOutbox
from .common import outbox_path

_OUTBOX_OPTION = click.option(
    "--outbox",
    "path",
    type=click.Path(dir_okay=False),
    help="Outbox file; default: the shared outbox in the user data directory.",
)
_YES_OPTION = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


def _path(path: str | None) -> str:
    path = outbox_path({"outbox": path})
    if not os.path.exists(path):
        raise click.ClickException(f"no outbox file at {path}")
    return path


async def _look(path: str, destination: str) -> tuple[dict[str, Any], list[str]]:
    """What the outbox holds for ``destination`` and which running sinks deliver there."""
    outbox = SQLiteOutbox(path)
    try:
        await outbox.open()  # upgrades an old file and returns rows of dead processes
        backlog = await outbox.backlog()
        served = await outbox.serving()
    finally:
        await outbox.close()
    if destination not in backlog:
        known = ", ".join(repr(name) for name in sorted(backlog)) or "none"
        raise click.ClickException(
            f"the outbox holds nothing for {destination!r}; destinations it holds: {known}"
        )
    held = backlog[destination]
    counts = {"pending": held.pending, "in_flight": held.in_flight, "dead": held.dead_letters}
    return counts, served.get(destination, [])


def _check_idle(destination: str, counts: dict[str, Any], served: list[str]) -> None:
    if served:
        raise click.ClickException(
            f"a running process delivers to {destination!r} (sink {', '.join(served)}); "
            "stop it first"
        )
    if counts["in_flight"]:
        raise click.ClickException(
            f"{counts['in_flight']:,} event(s) for {destination!r} are being sent by a running "
            "process; try again when it has stopped"
        )


async def _apply(path: str, action: str, *args: str) -> tuple[int, int]:
    outbox = SQLiteOutbox(path)
    try:
        await outbox.open()
        result: tuple[int, int] = await getattr(outbox, action)(*args)
        return result
    finally:
        await outbox.close()


def _amount(counts: dict[str, Any]) -> str:
    return f"{counts['pending']:,} pending event(s) and {counts['dead']:,} dead letter(s)"


@click.group(
    epilog="""
\b
Examples:
  eventsink status                       # shows "N pending for DEST, no process delivering"
  eventsink outbox move "sqlite /old/a.db" "sqlite /new/a.db"
  eventsink outbox drop "datasette https://retired.example/db/-/create" --yes
"""
)
def outbox() -> None:
    """Move or drop the events pending for a destination nobody delivers to.

    A destination is where a sink delivers, as 'eventsink status' shows it (for example
    'sqlite /home/ada/events.db'). Both commands refuse while a running process delivers to
    the destination, and ask before they change anything.
    """


@outbox.command()
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@_OUTBOX_OPTION
@_YES_OPTION
def move(source: str, target: str, path: str | None, yes: bool) -> None:
    """Give FROM's pending events and dead letters to destination TO.

    A process whose sink has destination TO delivers them (one running now picks them up
    within seconds). Their failure history is cleared.
    """
    path = _path(path)
    if source == target:
        raise click.ClickException("FROM and TO are the same destination")
    counts, served = asyncio.run(_look(path, source))
    _check_idle(source, counts, served)
    if not yes:
        click.confirm(f"Move {_amount(counts)} from {source!r} to {target!r}?", abort=True)
    pending, dead = asyncio.run(_apply(path, "move", source, target))
    click.echo(f"Moved {pending:,} pending event(s) and {dead:,} dead letter(s) to {target!r}.")


@outbox.command()
@click.argument("destination", metavar="DEST")
@_OUTBOX_OPTION
@_YES_OPTION
def drop(destination: str, path: str | None, yes: bool) -> None:
    """Delete DEST's pending events and dead letters for good."""
    path = _path(path)
    counts, served = asyncio.run(_look(path, destination))
    _check_idle(destination, counts, served)
    if not yes:
        click.confirm(
            f"Delete {_amount(counts)} for {destination!r}? They cannot be recovered",
            abort=True,
        )
    pending, dead = asyncio.run(_apply(path, "drop", destination))
    click.echo(f"Deleted {pending:,} pending event(s) and {dead:,} dead letter(s).")
