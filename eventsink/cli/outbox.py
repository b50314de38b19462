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


class _Nothing(Exception):
    """The outbox holds nothing for the destination: there is nothing to do."""


def _inspect(
    path_option: str | None, destination: str
) -> tuple[str, dict[str, Any], list[str]] | None:
    """The outbox path, what it holds for ``destination`` and who serves it; ``None`` (after
    saying so) when it holds nothing for it.

    Nothing to do is not an error: the command's end state already holds. The message lists
    the destinations the outbox does hold, so a mistyped one is easy to spot.
    """
    path = outbox_path({"outbox": path_option})
    try:
        if not os.path.exists(path):
            raise _Nothing(f"No outbox file at {path}: nothing for {destination!r}.")
        counts, served = asyncio.run(_look(path, destination))
    except _Nothing as nothing:
        click.echo(str(nothing))
        return None
    return path, counts, served


async def _look(path: str, destination: str) -> tuple[dict[str, Any], list[str]]:
    """What the outbox holds for ``destination`` and which running sinks deliver there.

    Raises :class:`_Nothing` when it holds nothing for it.
    """
    outbox = SQLiteOutbox(path)
    try:
        await outbox.open()  # upgrades an old file and returns rows of dead processes
        backlog = await outbox.backlog()
        served = await outbox.serving()
    finally:
        await outbox.close()
    held = backlog.get(destination)
    if held is None or not (held.pending or held.in_flight or held.dead_letters):
        known = ", ".join(repr(name) for name in sorted(backlog)) or "none"
        raise _Nothing(
            f"The outbox holds nothing for {destination!r}; destinations it holds: {known}."
        )
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
    the destination, and ask before they change anything. When the outbox holds nothing for
    it they say so, listing the destinations it does hold, and exit with status 0.
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
    if source == target:
        raise click.ClickException("FROM and TO are the same destination")
    found = _inspect(path, source)
    if found is None:
        return
    path, counts, served = found
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
    found = _inspect(path, destination)
    if found is None:
        return
    path, counts, served = found
    _check_idle(destination, counts, served)
    if not yes:
        click.confirm(
            f"Delete {_amount(counts)} for {destination!r}? They cannot be recovered",
            abort=True,
        )
    pending, dead = asyncio.run(_apply(path, "drop", destination))
    click.echo(f"Deleted {pending:,} pending event(s) and {dead:,} dead letter(s).")
