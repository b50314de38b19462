"""The ``eventsink`` command: a click group and its commands, one module each.

Commands live in ``eventsink/cli/*.py`` modules and are registered here with
``cli.add_command``; a new command is one module plus one line below. Every command runs
inside :func:`~eventsink.cli.interrupt.handle_interrupts`: Ctrl-C and SIGTERM exit 130
without a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from .consume import consume
from .interrupt import handle_interrupts
from .outbox import outbox
from .pull import pull, sources
from .replay import replay
from .send import send
from .sinks import sinks
from .status import status


class EventsinkGroup(click.Group):
    """The command group: runs every command with SIGTERM treated like Ctrl-C."""

    def invoke(self, ctx: click.Context) -> Any:
        # A command invoked in-process (tests, CliRunner) leaves logging as it found it.
        logger = logging.getLogger("eventsink")
        saved = logger.level, list(logger.handlers), logger.propagate
        try:
            with handle_interrupts():
                return super().invoke(ctx)
        finally:
            logger.setLevel(saved[0])
            logger.handlers[:] = saved[1]
            logger.propagate = saved[2]


@click.group(
    cls=EventsinkGroup,
    epilog="Run 'eventsink COMMAND --help' for a command's options and examples.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="eventsink")
def cli() -> None:
    """Deliver events to sinks without losing one.

    \b
    Examples:
      eventsink send events.jsonl && datasette events.db
      eventsink status
      eventsink replay --dead
      eventsink sinks
    """


cli.add_command(send)
cli.add_command(status)
cli.add_command(replay)
cli.add_command(sinks)
cli.add_command(pull)
cli.add_command(sources)
cli.add_command(consume)
cli.add_command(outbox)
