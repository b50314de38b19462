"""The ``eventsink`` command."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="eventsink")
def cli() -> None:
    """Deliver events to sinks without losing one."""


from .cli_pull import pull, sources  # noqa: E402  # registered after the group exists

cli.add_command(pull)
cli.add_command(sources)
