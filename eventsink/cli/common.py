"""What the CLI commands share: reading the configuration, naming sinks, running a pipeline.

Sink names in the outbox
    The outbox keys every pending event and dead letter by the configured sink's *name*. When a
    configuration does not name a sink, the CLI names it after its destination
    (``Sink.describe()``, e.g. ``sqlite /home/ada/events.db``), not after its type. Events left
    in the shared outbox by an interrupted ``eventsink send`` are then delivered by the next
    run to the *same* destination only, never to another ``events.db``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import pluggy

from ..config import Settings, parse_config
from ..exceptions import ConfigError
from ..hookspecs import hookimpl
from ..pipeline.pipeline import Pipeline, default_outbox_path
from ..plugins import lookup, make_plugin_manager, sink_classes
from ..sink import Sink

DEFAULT_SINK = "sqlite"


def parse_option_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("path=x.db", "batch_limit=500")`` -> a dict; a pair without ``=`` is a usage error."""
    options = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="'-o'")
        options[key.strip()] = value
    return options


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
    defaults: Mapping[str, Any] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """Merge ``--config``, ``--sink``, ``-o`` and ``--outbox`` (later ones win) over defaults."""
    config: dict[str, Any] = dict(defaults)
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
    return config


def outbox_path(config: Mapping[str, Any]) -> str:
    """The outbox the configuration names, or the shared default under the user data dir."""
    path = os.fspath(Path(config.get("outbox") or default_outbox_path()).expanduser())
    return path if path == ":memory:" else os.path.abspath(path)


def build_pipeline(
    config: dict[str, Any], pm: pluggy.PluginManager | None = None
) -> tuple[Pipeline, Settings]:
    """A pipeline for ``config``, sinks without an explicit name named after their destination.

    Raises :class:`ConfigError` naming the key for a bad configuration.
    """
    pm = pm or make_plugin_manager()
    classes = sink_classes(pm)
    config = {"outbox": outbox_path(config), **{k: v for k, v in config.items() if v is not None}}
    settings = parse_config(
        config,
        lambda name, key: lookup(classes, name, "sink", key).options,
        default_sink=DEFAULT_SINK,
    )
    entries = config.get("sinks") or [config]
    sinks: dict[str, Sink] = {}
    named = []
    for entry, sink_config in zip(entries, settings.sinks, strict=True):
        sink = classes[sink_config.type](**sink_config.options)
        name = sink_config.name if entry.get("name") else sink.describe()
        base, number = name, 2
        while name in sinks:
            name, number = f"{base} #{number}", number + 1
        sinks[name] = sink
        named.append(dataclasses.replace(sink_config, name=name))
    settings = dataclasses.replace(settings, sinks=tuple(named))
    return Pipeline(settings, pm=pm, sinks=sinks), settings


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


class BackgroundPipeline:
    """A pipeline running on its own event-loop thread, driven from the main thread."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="eventsink-cli", daemon=True
        )
        self.thread.start()
        try:
            self.run(pipeline.start())
        except BaseException:
            self.stop()
            raise

    def run(self, coroutine: Any, timeout: float | None = None) -> Any:
        """Run ``coroutine`` on the pipeline's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self, timeout: float | None) -> int:
        """Deliver within ``timeout`` seconds (``None``: until done), stop; return events left."""
        try:
            return self.run(self.pipeline.close(timeout))
        finally:
            self.stop()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def setup_logging(verbose: int, console: Any | None = None) -> None:
    """Show eventsink's warnings (and with ``-v`` its info) on standard error."""
    logger = logging.getLogger("eventsink")
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
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
    exception = click.ClickException(str(error))
    exception.exit_code = 2
    return exception


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
