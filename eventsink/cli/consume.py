"""``eventsink consume``: drain a NATS JetStream stream into any sink.

::

    eventsink consume --config consume.yaml
    eventsink consume --servers nats://n1:4222 --stream EVENTS --durable loaders \\
        --set sink=sqlite --set path=events.db

The config file is the usual eventsink config (``sink`` and its options, delivery options)
plus a ``consume`` block with the JetStream side (see
:data:`eventsink.nats.consumer.CONSUME_OPTIONS`). Command-line flags override the file.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from ..exceptions import ConfigError
from ..nats.consumer import JetStreamConsumer, build_consumer
from .common import load_config_file

logger = logging.getLogger("eventsink")


async def run_consumer(consumer: JetStreamConsumer) -> None:
    """Run until SIGINT/SIGTERM, then finish the batch in hand and stop."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, consumer.stop)
    await consumer.run()


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--servers", help="Comma-separated NATS server URLs.")
@click.option("--stream", help="JetStream stream to read (default EVENTS).")
@click.option("--durable", help="Durable consumer name shared by the workers (default eventsink).")
@click.option("--filter-subject", help="Only messages on this subject.")
@click.option("--batch", type=int, help="Messages per batch (default 500).")
@click.option("--ack-wait", type=float, help="Seconds before an unacked batch is redelivered.")
@click.option(
    "-s",
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a top-level config key, e.g. --set sink=sqlite --set path=events.db.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log each batch's progress.")
def consume(
    config_path: str | None,
    servers: str | None,
    stream: str | None,
    durable: str | None,
    filter_subject: str | None,
    batch: int | None,
    ack_wait: float | None,
    assignments: tuple[str, ...],
    verbose: bool,
) -> None:
    """Deliver events from a NATS JetStream stream to a sink, acking only what it confirmed.

    Run several workers with the same --durable to share the work; a worker that dies
    mid-batch has its batch redelivered, and sinks keyed by event id store each event once.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    config = load_config_file(config_path) if config_path else {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--set {assignment!r}: expected KEY=VALUE")
        config[key] = value
    block = dict(config.get("consume") or {})
    flags = {
        "servers": servers,
        "stream": stream,
        "durable": durable,
        "filter_subject": filter_subject,
        "batch": batch,
        "ack_wait": ack_wait,
    }
    block.update({key: value for key, value in flags.items() if value is not None})
    config["consume"] = block
    try:
        consumer = build_consumer(config)
        asyncio.run(run_consumer(consumer))
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"eventsink consume: delivered {consumer.delivered} event(s)", err=True)
