"""What the CLI commands share: reading the configuration, options, logging, summaries.

Commands build their pipeline with :func:`eventsink.build` (the ``cli`` and ``send`` entry
points call a sink without a ``name`` by where it delivers, ``Sink.describe()``, in their
output) and run it with :class:`eventsink.pipeline.runner.PipelineRunner`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from ..builder import outbox_path as resolve_outbox_path
from ..config import ENTRY_POINTS
from ..exceptions import ConfigError
from ..hookspecs import hookimpl
from ..pipeline.runner import PipelineRunner
from .interrupt import EXIT_USAGE, signals_ignored

DEFAULT_SINK = ENTRY_POINTS["cli"].sink


def parse_option_pairs(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("path=x.db", "batch_limit=500")`` -> a dict; a pair without ``=`` is a usage error.

    A value ``{"$env": "NAME"}`` or ``{"$file": "PATH"}`` (JSON) is read from the environment
    or a file, as in a configuration file, so a secret need not be on the command line.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="'-o'")
        options[key.strip()] = _reference(value)
    return options


def _reference(value: str) -> Any:
    if not value.lstrip().startswith("{"):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if isinstance(parsed, dict) and set(parsed) in ({"$env"}, {"$file"}):
        return parsed
    return value


def load_config_file(path: str) -> dict[str, Any]:
    """A YAML or JSON configuration file (YAML is a superset of JSON) as a dict."""
    import yaml  # imported here: only commands given --config pay for it

    try:
        text = Path(path).expanduser().read_text()
    except OSError as error:
        raise click.BadParameter(
            f"cannot read {path!r}: {error.strerror}", param_hint="'--config'"
        ) from None
    try:
        config = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as error:
        raise click.BadParameter(
            f"{path!r} is not YAML or JSON: {error}", param_hint="'--config'"
        ) from None
    if not isinstance(config, dict):
        raise click.BadParameter(
            f"{path!r} must hold an object (the plugin configuration), not {type(config).__name__}",
            param_hint="'--config'",
        )
    return config


def build_config(
    config_file: str | None,
    sink: str | None,
    options: tuple[str, ...],
    outbox: str | None,
) -> dict[str, Any]:
    """Merge ``--config``, ``--sink``, ``-o`` and ``--outbox`` (later ones win)."""
    config: dict[str, Any] = {}
    if config_file:
        config.update(load_config_file(config_file))
    if sink:
        if "sinks" in config:
            raise click.UsageError("--sink cannot be combined with a config file giving 'sinks'")
        config["sink"] = sink
    pairs = parse_option_pairs(options)
    if pairs and "sinks" in config:
        raise click.UsageError(
            "-o sets options of a single sink; with 'sinks' in the config file, put the "
            "options in each sink's entry"
        )
    config.update(pairs)
    if outbox:
        config["outbox"] = outbox
    # An empty key in a YAML file (``max_rate:``) means "the default", as if it were absent.
    return {key: value for key, value in config.items() if value is not None}


def outbox_path(config: Mapping[str, Any]) -> str:
    """The outbox the configuration names, or the shared default under the user data dir."""
    return resolve_outbox_path(config.get("outbox"))


class Outcomes:
    """Plugin counting final failures by sink and message, for a command's summary."""

    def __init__(self) -> None:
        self.dead: Counter[tuple[str, str]] = Counter()

    @hookimpl
    def eventsink_send_error(
        self, sink: str, batch: list[Any], error: BaseException, final: bool
    ) -> None:
        if final:
            self.dead[(sink, str(error) or type(error).__name__)] += len(batch)


def start_runner(pipeline: Any) -> PipelineRunner:
    """Start ``pipeline`` on a background runner; a sink's ``ConfigError`` exits 2."""
    try:
        return PipelineRunner(pipeline, name="eventsink-cli").start()
    except ConfigError as error:
        raise config_error(error) from None


def deliver(runner: PipelineRunner, timeout: float | None) -> bool:
    """Wait until everything written is delivered, dead-lettered or its sink paused.

    ``False`` if ``timeout`` seconds passed first. Ctrl-C interrupts the wait (see
    :func:`eventsink.cli.interrupt.stop_on_interrupt`); nothing is lost.
    """
    return runner.run(runner.pipeline.flush(timeout, unless_paused=True))


def close(runner: PipelineRunner, timeout: float = 0.0) -> int:
    """Stop the pipeline (after :func:`deliver`); return the events left in the outbox.

    Not interruptible: a close cut short would leave tasks behind on a stopped loop, and it
    is bounded (the lanes get a few seconds to finish the batch in hand).
    """
    with signals_ignored():
        return runner.close(timeout)


def setup_logging(verbose: int, console: Any | None = None, *, quiet: bool = False) -> None:
    """Show eventsink's warnings (``-v`` its info, ``-q`` only errors) on standard error."""
    logger = logging.getLogger("eventsink")
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logger.setLevel(logging.ERROR if quiet else level)
    for handler in list(logger.handlers):
        if getattr(handler, "_eventsink_cli", False):
            logger.removeHandler(handler)
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("eventsink: %(levelname)s: %(message)s"))
    handler._eventsink_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def config_error(error: ConfigError) -> click.ClickException:
    """A bad configuration as a clean CLI error (exit status 2), naming the key."""
    return usage_error(click.ClickException(str(error)))


def usage_error(exception: click.ClickException) -> click.ClickException:
    """``exception`` with the exit status of bad usage (2), e.g. an input file missing."""
    exception.exit_code = EXIT_USAGE
    return exception


def output_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``-v/--verbose`` (repeat for debug) and ``-q/--quiet``, the same on every command."""
    function = click.option(
        "-q", "--quiet", is_flag=True, help="Print only errors (and --json output)."
    )(function)
    return click.option("-v", "--verbose", count=True, help="Log more (-vv: debug).")(function)


def dumps(value: Any) -> str:
    """Pretty JSON for ``--json`` output."""
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def sink_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options choosing where events go: ``--sink``, ``-o``, ``--config``, ``--outbox``."""
    for decorator in reversed(
        (
            click.option(
                "--sink",
                "sink",
                metavar="NAME",
                help=f"Sink to deliver to (see 'eventsink sinks'); default: {DEFAULT_SINK}.",
            ),
            click.option(
                "-o",
                "--option",
                "options",
                multiple=True,
                metavar="KEY=VALUE",
                help="A sink, delivery or pipeline option; repeat for several.",
            ),
            click.option(
                "-c",
                "--config",
                "config_file",
                type=click.Path(dir_okay=False),
                help="YAML or JSON file shaped like the plugin configuration.",
            ),
            click.option(
                "--outbox",
                type=click.Path(dir_okay=False),
                help="Outbox file, or ':memory:'; default: the shared outbox in the user data "
                "directory.",
            ),
        )
    ):
        function = decorator(function)
    return function
