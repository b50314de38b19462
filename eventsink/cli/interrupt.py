"""Exit statuses, and stopping any command cleanly on Ctrl-C (SIGINT) or SIGTERM.

Every command runs inside :func:`handle_interrupts` (the ``eventsink`` group does it): SIGTERM
is turned into the ``KeyboardInterrupt`` Ctrl-C raises, so both stop a command the same way.
A command delivering events waits on its pipeline from the main thread; when that wait is
interrupted, :func:`stop_pipeline` closes the pipeline within a second or two (what is
pending stays in the outbox), counts what the outbox holds for the command's sinks and
raises :class:`Interrupted`. :func:`handle_interrupts` turns that into one line on standard
error and exit status 130, the shell's convention for "stopped by SIGINT".
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import click

EXIT_OK = 0
EXIT_FAILURE = 1  # events left undelivered (--timeout, a paused sink), or an error
EXIT_USAGE = 2  # bad usage or configuration: nothing was done
EXIT_DEAD_LETTERS = 3  # events were set aside: dead-lettered by a sink, or malformed input
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: 128 + SIGINT, as shells report it

STOP_TIMEOUT = 0.0  # seconds an interrupted pipeline goes on delivering before it stops


class Interrupted(click.ClickException):
    """A command stopped by Ctrl-C or SIGTERM, with what it left for the next run."""

    exit_code = EXIT_INTERRUPTED

    def __init__(
        self, kept: int | None = None, *, durable: bool = True, bare: bool = False
    ) -> None:
        self.kept = kept
        if bare:
            message = "Interrupted."
        elif kept is None:
            message = (
                "Interrupted: undelivered events are kept in the outbox; run again to deliver them"
            )
        elif durable:
            message = (
                f"Interrupted: {kept:,} event{'' if kept == 1 else 's'} kept in the outbox; "
                "run again to deliver them"
            )
        else:
            message = f"Interrupted: {kept:,} undelivered event(s) lost (the outbox is in memory)"
        super().__init__(message)

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C; turn a ``KeyboardInterrupt`` into exit status 130."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(bare=True) from None  # a command with no pipeline running
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Hold off Ctrl-C and SIGTERM while a bounded shutdown runs, so it is not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def kept_in_outbox(path: str, destinations: Iterable[str]) -> int | None:
    """How many events the outbox file holds for ``destinations`` (``None``: unreadable).

    Read directly from the file (never created), so it is what the next run finds there.
    """
    keys = list(destinations)
    if not keys or not os.path.exists(path):
        return 0
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        marks = ",".join("?" * len(keys))
        (count,) = connection.execute(
            f"select coalesce(sum(events), 0) from eventsink_outbox where destination in ({marks})",
            keys,
        ).fetchone()
        return int(count)
    except sqlite3.Error:
        return None
    finally:
        connection.close()


def stop_pipeline(running: Any) -> Interrupted:
    """Close an interrupted command's pipeline now; the :class:`Interrupted` to raise.

    ``running`` is the command's background pipeline. Whatever is not delivered stays in a
    durable outbox; the count is read back from the outbox file, so it is what a rerun finds.
    """
    pipeline = running.pipeline
    logger = logging.getLogger("eventsink")
    level = logger.level
    # The pipeline's own "closed with N undelivered event(s)" warning would repeat what the
    # Interrupted line says; errors (a sink failing to close) still show.
    with signals_ignored():
        logger.setLevel(max(level, logging.ERROR))
        try:
            left = running.close(STOP_TIMEOUT)
        finally:
            logger.setLevel(level)
        if not pipeline.outbox.durable:
            return Interrupted(left, durable=False)
        destinations = [lane.destination for lane in pipeline.lanes.values()]
        return Interrupted(kept_in_outbox(pipeline.settings.outbox or "", destinations))


@contextlib.contextmanager
def stop_on_interrupt(running: Any) -> Iterator[None]:
    """Around the work of a command with a background pipeline: stop it on Ctrl-C/SIGTERM."""
    try:
        yield
    except KeyboardInterrupt:
        raise stop_pipeline(running) from None
