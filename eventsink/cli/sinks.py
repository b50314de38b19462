"""``eventsink sinks``: every installed sink with its options, read from the plugins."""

from __future__ import annotations

from typing import Any

import click

from ..config import DELIVERY_OPTIONS, Option
from ..plugins import make_plugin_manager, sink_classes
from .common import dumps


def _option(option: Option) -> dict[str, Any]:
    return {
        "name": option.name,
        "type": option.kind.__name__,
        "default": None if option.required else option.default,
        "required": option.required,
        "secret": option.secret,
        "choices": list(option.choices) if option.choices else None,
        "help": option.help,
    }


def describe_sinks() -> list[dict[str, Any]]:
    """Every registered sink class as a JSON-safe dict, sorted by name."""
    classes = sink_classes(make_plugin_manager())
    return [
        {
            "name": name,
            "description": getattr(cls, "description", "") or (cls.__doc__ or "").strip(),
            "module": cls.__module__,
            "builtin": cls.__module__.startswith("eventsink.sinks."),
            "options": [_option(option) for option in getattr(cls, "options", ())],
        }
        for name, cls in sorted(classes.items())
    ]


def _option_line(option: dict[str, Any]) -> str:
    if option["required"]:
        default = "required"
    elif option["default"] is None:
        default = "default: none"
    else:
        default = f"default: {option['default']!r}"
    extra = f"; one of {', '.join(map(repr, option['choices']))}" if option["choices"] else ""
    secret = "; secret" if option["secret"] else ""
    head = f"    {option['name']} ({option['type']}, {default}{extra}{secret})"
    return f"{head}\n        {option['help']}"


@click.command(
    epilog="""
\b
Examples:
  eventsink sinks
  eventsink sinks --json | jq '.sinks[].name'
  eventsink sinks -q
"""
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("-q", "--quiet", is_flag=True, help="Only the sinks' names, one a line.")
@click.option("-v", "--verbose", count=True, hidden=True)  # accepted like everywhere
def sinks(as_json: bool, quiet: bool, verbose: int) -> None:
    """List every installed sink (built-in and from plugins) with its options.

    Give a sink to 'eventsink send --sink NAME' with '-o KEY=VALUE' options, or as 'sink:' /
    a 'sinks' entry's 'type:' in a configuration file. Every sink also takes the delivery
    options listed at the end.
    """
    found = describe_sinks()
    delivery = [_option(option) for option in DELIVERY_OPTIONS]
    if as_json:
        click.echo(dumps({"sinks": found, "delivery_options": delivery}))
        return
    if quiet:
        for sink in found:
            click.echo(sink["name"])
        return
    for sink in found:
        origin = "built-in" if sink["builtin"] else f"plugin {sink['module']}"
        click.echo(f"{sink['name']} ({origin})")
        if sink["description"]:
            click.echo(f"  {sink['description']}")
        for option in sink["options"]:
            click.echo(_option_line(option))
        click.echo()
    click.echo("Delivery options (every sink):")
    for option in delivery:
        click.echo(_option_line(option))
