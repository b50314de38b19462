"""The ``eventsink`` command."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="eventsink")
def cli() -> None:
    """Deliver events to sinks without losing one."""


from .cli_consume import consume  # noqa: E402  # registered here, defined in its own module

cli.add_command(consume)
