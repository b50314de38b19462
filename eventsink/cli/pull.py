"""``eventsink pull SOURCE`` and ``eventsink sources``: pull data sources from the command line.

Each installed source is a sub-command of ``pull``, so ``eventsink pull datasette --help``
shows that source's parameters (from its module's ``CONFIG``). Parameters are given as
``-p name=value`` or ``--name value``; secret ones may also come from the environment
(``EVENTSINK_<SOURCE>_<NAME>``), which keeps them out of the process list.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from ..builder import build
from ..config import ENTRY_POINTS
from ..exceptions import ConfigError, EventsinkError
from ..pipeline.pipeline import Pipeline
from ..plugins import lookup, make_plugin_manager, source_classes
from ..pull.checkpoints import CheckpointStore
from ..pull.puller import DEFAULT_READ_SIZE, Puller, masked
from ..pull.source import DataSource
from .common import build_config, close, deliver, setup_logging, start_runner
from .interrupt import EXIT_DEAD_LETTERS, EXIT_FAILURE, Interrupted, stop_on_interrupt

logger = logging.getLogger("eventsink")


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.UsageError(f"{flag} takes name=value, not {value!r}")
        pairs[name.strip()] = text
    return pairs


PROGRESS_HELP = "Show a progress bar; default: when standard error is a terminal."
EXIT_HELP = (
    "Exit status: 0 all read and delivered; 1 a failure, or events left undelivered "
    "(--flush-timeout); 2 bad usage or configuration; 3 some events were dead-lettered; "
    "130 interrupted (run again: it resumes after the checkpoint)."
)


def _envvar(source: str, param: str) -> str:
    return f"EVENTSINK_{source}_{param}".upper().replace("-", "_")


def _param_help(param: dict[str, Any]) -> str:
    bits = [param.get("title") or param["name"]]
    if param.get("help"):
        bits.append(f"- {param['help']}")
    flags = [word for word, on in (("required", param.get("required")),) if on]
    if param.get("secret"):
        flags.append("secret")
    if param.get("default") is not None:
        flags.append(f"default: {param['default']}")
    if flags:
        bits.append(f"[{'; '.join(flags)}]")
    return " ".join(bits)


def _source_command(name: str, cls: type[DataSource]) -> click.Command:
    config = cls.config()
    params = cls.params()
    options: list[click.Parameter] = []
    for param in params:
        flag = "--" + param["name"].replace("_", "-")
        envvar = _envvar(name, param["name"]) if param.get("secret") else None
        options.append(
            click.Option(
                [flag, param["name"]],
                metavar=str(param.get("placeholder") or "VALUE"),
                help=_param_help(param),
                envvar=envvar,
                show_envvar=bool(envvar),
                default=None,
            )
        )
    options += [
        click.Option(  # the old spelling of --NAME VALUE, kept working
            ["-p", "--param", "param_pairs"], multiple=True, metavar="NAME=VALUE", hidden=True
        ),
        click.Option(
            ["--sink"],
            default=None,
            help=f"Sink to deliver to [default: {ENTRY_POINTS['pull'].sink}].",
        ),
        click.Option(
            ["-o", "--option", "sink_pairs"],
            multiple=True,
            metavar="KEY=VALUE",
            help="A sink or pipeline option (repeatable), e.g. -o path=copy.db.",
        ),
        click.Option(
            ["-c", "--config", "config_file"],
            type=click.Path(exists=True, dir_okay=False),
            help="Pipeline configuration (JSON or YAML) instead of --sink/-o.",
        ),
        click.Option(
            ["--outbox"],
            help="The outbox file, which also keeps the checkpoints [default: the user data "
            "directory's outbox.db].",
        ),
        click.Option(["--restart"], is_flag=True, help="Forget the checkpoint; read all again."),
        click.Option(
            ["--read-size"],
            type=click.IntRange(1),
            default=DEFAULT_READ_SIZE,
            show_default=True,
            help="Records asked of each read().",
        ),
        click.Option(
            ["--rate"],
            type=click.FloatRange(0, min_open=True),
            help="Most records read per second (be gentle with the origin).",
        ),
        click.Option(
            ["--retries"], type=click.IntRange(1), help="Attempts of a failing read [default: 3]."
        ),
        click.Option(
            ["--flush-timeout"],
            type=float,
            default=60.0,
            show_default=True,
            help="Seconds to wait for delivery at the end; the rest stays in the outbox.",
        ),
        click.Option(["--progress/--no-progress"], default=None, help=PROGRESS_HELP),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the final status as JSON."),
        click.Option(["-v", "--verbose"], count=True, help="Log to stderr (-vv: debug)."),
        click.Option(["-q", "--quiet"], is_flag=True, help="Print only errors (and --json)."),
    ]

    def callback(**kwargs: Any) -> None:
        _pull(name, cls, params, kwargs)

    return click.Command(
        name,
        params=options,
        callback=callback,
        help=f"Pull from the {name} source: {config.get('title', name)}.\n\n"
        + (cls.__doc__ or "").strip().splitlines()[0]
        + "\n\n"
        + EXIT_HELP,
        short_help=config.get("title", name),
    )


class SourceGroup(click.Group):
    """``pull``: one sub-command per installed source, built from its ``CONFIG``."""

    def _classes(self) -> dict[str, type]:
        return source_classes(make_plugin_manager())

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._classes())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        classes = self._classes()
        if name not in classes:
            try:
                lookup(classes, name, "source", "SOURCE")
            except ConfigError as error:
                raise click.UsageError(str(error), ctx) from None
        return _source_command(name, classes[name])


@click.group(cls=SourceGroup, name="pull")
def pull() -> None:
    """Copy records from a data source through the pipeline into a sink, resumably.

    Progress is checkpointed in the outbox database; running the same pull again continues
    after the last committed checkpoint (--restart to start over).
    """


def _pull(name: str, cls: type[DataSource], params: list[dict[str, Any]], kw: dict[str, Any]):
    setup_logging(kw["verbose"], quiet=kw["quiet"])
    given = _pairs(kw["param_pairs"], "-p")
    for param in params:
        if kw.get(param["name"]) is not None:
            given[param["name"]] = kw[param["name"]]
    for param in params:
        if param.get("required") and given.get(param["name"]) in (None, ""):
            flag = param["name"].replace("_", "-")
            raise click.UsageError(
                f"source {name!r} needs the parameter {param['name']!r} "
                f"({_param_help(param)}): give it as -p {param['name']}=VALUE or --{flag} VALUE"
            )
    try:
        source = cls(given, {})
    except ConfigError as error:
        key = error.key or ""
        flag = key.replace("_", "-")
        raise click.UsageError(
            f"source {name!r}: {error} (give it as -p {key}=VALUE or --{flag} VALUE)"
        ) from None
    if kw["config_file"] and (kw["sink"] or kw["sink_pairs"]):
        raise click.UsageError("give either --config or --sink/-o, not both")
    config = build_config(kw["config_file"], kw["sink"], kw["sink_pairs"], kw["outbox"])
    pm = make_plugin_manager()
    try:
        pipeline = build(config, entry_point="pull", pm=pm)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    outbox = pipeline.settings.outbox
    store = CheckpointStore(None if outbox == ":memory:" else Path(outbox))
    if not store.durable:
        logger.warning("eventsink pull: an in-memory outbox keeps no checkpoint; no resume")
    logger.info("eventsink pull %s: %s", name, masked(source.source))
    try:
        status = _run(source, pipeline, store, kw)
    except EventsinkError as error:
        raise click.ClickException(f"pull {name}: {error}") from None
    finally:
        store.close()
    if kw["as_json"]:
        click.echo(json.dumps(status, default=str))
    resumed = f", resumed after {status['resumed_from']}" if status["resumed_from"] else ""
    if not kw["quiet"]:
        click.echo(
            f"eventsink pull {name}: read {status['read']} record(s) into "
            f"{status['destination']!r}{resumed}; {status['left']} left in the outbox",
            err=True,
        )
    if status["left"]:
        sys.exit(EXIT_FAILURE)
    if status["dead_lettered"]:
        sys.exit(EXIT_DEAD_LETTERS)


def _run(
    source: DataSource, pipeline: Pipeline, store: CheckpointStore, kw: dict
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    running = start_runner(pipeline)
    progress = kw["progress"]
    if progress is None:
        progress = sys.stderr.isatty() and not kw["quiet"]
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
        transient=False,
    )
    task = bar.add_task(f"{source.name} -> {source.destination}", total=None)

    def on_progress(loaded: int, total: int | None, msg: str | None) -> None:
        bar.update(task, completed=loaded, total=total)
        if msg:
            bar.update(task, description=f"{source.name}: {msg}")

    puller = Puller(
        source,
        pipeline,
        store,
        read_size=kw["read_size"],
        rate=kw["rate"],
        retries=kw["retries"],
        restart=kw["restart"],
        on_progress=on_progress,
    )
    try:
        with stop_on_interrupt(running), bar:
            running.run(puller.run())
            deliver(running, kw["flush_timeout"])
    except Interrupted:
        raise
    except BaseException:
        close(running)
        raise
    left = close(running)
    dead = sum(lane.stats.dead_lettered for lane in pipeline.lanes.values())
    return {
        **puller.status(),
        "left": left,
        "accepted": pipeline.intake.accepted,
        "dead_lettered": dead,
    }


@click.command(
    name="sources",
    epilog="""
\b
Examples:
  eventsink sources
  eventsink sources -q
""",
)
@click.option("-q", "--quiet", is_flag=True, help="Only the sources' names, one a line.")
@click.option("-v", "--verbose", count=True, hidden=True)  # accepted like everywhere
def sources(quiet: bool, verbose: int) -> None:
    """List the installed pull data sources and their parameters."""
    for name, cls in sorted(source_classes(make_plugin_manager()).items()):
        if quiet:
            click.echo(name)
            continue
        click.echo(f"{name}: {cls.config().get('title', name)}")
        for param in cls.params():
            click.echo(f"  {param['name']}: {_param_help(param)}")
