"""``eventsink consume``: drain a NATS JetStream stream into any sink.

::

    eventsink consume --config consume.yaml
    eventsink consume --servers nats://n1:4222 --stream EVENTS --durable loaders \\
        --sink sqlite -o path=events.db

The config file is the usual eventsink config (``sink`` and its options, delivery options)
plus a ``consume`` block with the JetStream side (see
:data:`eventsink.nats.consumer.CONSUME_OPTIONS`). Command-line flags override the file.

Unlike the other commands, ``consume`` runs until it is stopped: SIGTERM or Ctrl-C is its
normal end. It finishes the batch in hand, acks what the sink confirmed and exits 0; what
it did not ack stays in the stream for the next worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from ..exceptions import ConfigError
from ..nats.consumer import JetStreamConsumer, build_consumer
from .common import (
    config_error,
    load_config_file,
    output_options,
    parse_option_pairs,
    setup_logging,
)

logger = logging.getLogger("eventsink")


async def run_consumer(consumer: JetStreamConsumer) -> None:
    """Run until SIGINT/SIGTERM, then finish the batch in hand and stop."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, consumer.stop)
    await consumer.run()


@click.command(
    epilog="""
\b
Examples:
  eventsink consume -c consume.yaml
  eventsink consume --servers nats://127.0.0.1:4222 --stream EVENTS --durable loaders \\
      --sink sqlite -o path=events.db
"""
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML or JSON file: sink options plus a 'consume' block.",
)
@click.option("--servers", help="Comma-separated NATS server URLs.")
@click.option("--stream", help="JetStream stream to read (default EVENTS).")
@click.option("--durable", help="Durable consumer name shared by the workers (default eventsink).")
@click.option("--filter-subject", help="Only messages on this subject.")
@click.option("--batch", type=int, help="Messages per batch (default 500).")
@click.option("--ack-wait", type=float, help="Seconds before an unacked batch is redelivered.")
@click.option("--sink", metavar="NAME", help="Sink to deliver to (see 'eventsink sinks').")
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A sink or delivery option, e.g. -o path=events.db; repeat for several.",
)
@click.option(  # the old spelling of -o, kept working
    "-s", "--set", "assignments", multiple=True, metavar="KEY=VALUE", hidden=True
)
@output_options
def consume(
    config_path: str | None,
    servers: str | None,
    stream: str | None,
    durable: str | None,
    filter_subject: str | None,
    batch: int | None,
    ack_wait: float | None,
    sink: str | None,
    options: tuple[str, ...],
    assignments: tuple[str, ...],
    verbose: int,
    quiet: bool,
) -> None:
    """Deliver events from a NATS JetStream stream to a sink, acking only what it confirmed.

    Run several workers with the same --durable to share the work; a worker that dies
    mid-batch has its batch redelivered, and sinks keyed by event id store each event once.

    Runs until stopped: on SIGTERM or Ctrl-C it finishes the batch in hand and exits 0.
    Exit status: 0 stopped; 1 a failure; 2 bad usage or configuration.
    """
    setup_logging(verbose, quiet=quiet)
    config = load_config_file(config_path) if config_path else {}
    if sink:
        config["sink"] = sink
    config.update(parse_option_pairs(assignments + options))
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
    except ConfigError as error:
        raise config_error(error) from None
    try:
        asyncio.run(run_consumer(consumer))
    except ConfigError as error:
        raise config_error(error) from None
    if not quiet:
        click.echo(f"eventsink consume: delivered {consumer.delivered} event(s)", err=True)
