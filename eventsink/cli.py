"""The ``eventsink`` command."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="eventsink")
def cli() -> None:
    """Deliver events to sinks without losing one."""
