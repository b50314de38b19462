"""The ``eventsink`` command: a click group and its commands, one module each.

Commands live in ``eventsink/cli_*.py`` modules and are registered here with
``cli.add_command``; a new command is one module plus one line below.
"""

from __future__ import annotations

import click

from .consume import consume
from .outbox import outbox
from .pull import pull, sources
from .replay import replay
from .send import send
from .sinks import sinks
from .status import status


@click.group(
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
