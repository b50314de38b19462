"""``eventsink status``: what an outbox holds, read straight from its SQLite file."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from typing import Any

import click

from ..metrics import age_seconds, prometheus_text, samples
from ..outbox.sqlite import SQLiteOutbox, ensure_schema
from .common import dumps, outbox_path, output_options
from .interrupt import EXIT_DEAD_LETTERS, EXIT_FAILURE, EXIT_OK


def write_problem(path: str) -> str | None:
    """Why the outbox at ``path`` cannot be written now (a full or read-only disk), or None."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        stats = os.statvfs(directory)
    except OSError as error:
        return f"outbox cannot be written: {error.strerror}"
    if stats.f_flag & os.ST_RDONLY:
        return "outbox cannot be written: Read-only file system"
    if stats.f_bavail == 0:
        return "outbox cannot be written: No space left on device"
    return None


async def read_status(path: str) -> dict[str, Any]:
    """Per destination pending, in flight, oldest pending age, retry state and dead letters,
    and which live processes deliver there (``served_by``, the sinks' configured names).

    ``undelivered`` lists the destinations with pending events that no running process
    delivers to. Error messages are shown as the sinks stored them; sinks never put secrets
    in them.
    """
    report: dict[str, Any] = {
        "outbox": path,
        "exists": os.path.exists(path),
        "sinks": {},
        "undelivered": [],
        "dead_letters": [],
        "totals": {"pending": 0, "in_flight": 0, "dead_letters": 0},
        "problem": None,
    }
    if not report["exists"]:
        return report
    report["problem"] = write_problem(path)
    outbox = SQLiteOutbox(path)

    def extra(connection: sqlite3.Connection) -> tuple[list[Any], list[Any]] | None:
        tables = {row[0] for row in connection.execute("select name from sqlite_master")}
        if "eventsink_outbox" not in tables:
            return None
        ensure_schema(connection, path)  # an outbox of an older eventsink: upgrade it first
        retrying = connection.execute(
            "select destination, max(attempts), min(first_failure), max(last_error), "
            "max(last_status), max(paused) "
            "from eventsink_outbox where attempts > 0 group by destination"
        ).fetchall()
        dead = connection.execute(
            "select destination, status, error, count(*), min(id), max(id), max(last_failure) "
            "from eventsink_dead_letters group by destination, status, error "
            "order by destination, count(*) desc"
        ).fetchall()
        return retrying, dead

    try:
        found = await outbox.runner.run(extra)
        if found is None:
            return report
        backlog = await outbox.backlog()
        served = await outbox.serving()
    except (OSError, sqlite3.Error) as error:  # a full disk refuses even a read's commit
        report["problem"] = report["problem"] or f"outbox cannot be read: {error}"
        return report
    finally:
        await outbox.runner.close()
    retrying = {row[0]: row for row in found[0]}
    now = time.time()
    for name in sorted(backlog):
        held = backlog[name]
        retry = retrying.get(name)
        report["sinks"][name] = {
            "pending": held.pending,
            "in_flight": held.in_flight,
            "oldest_pending": held.oldest_created,
            "oldest_pending_age": age_seconds(held.oldest_created, now),
            "bytes": held.bytes,
            "dead_letters": held.dead_letters,
            "served_by": served.get(name, []),
            # A batch failing now: retried with back-off, or paused (e.g. a refused token)
            # until someone acts.
            "failing": {
                "attempts": retry[1],
                "since": retry[2],
                "last_error": retry[3],
                "status": retry[4],
                "paused": bool(retry[5]),
            }
            if retry
            else None,
        }
        for key in ("pending", "in_flight", "dead_letters"):
            report["totals"][key] += getattr(held, key)
        if held.pending and name not in served:
            report["undelivered"].append({"destination": name, "pending": held.pending})
    report["dead_letters"] = [
        {
            "sink": sink,  # the destination, as in "sinks"
            "status": status,
            "error": error,
            "count": count,
            "first_id": first,
            "last_id": last,
            "last_failure": last_failure,
        }
        for sink, status, error, count, first, last, last_failure in found[1]
    ]
    return report


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def problems(report: dict[str, Any]) -> tuple[int, list[str]]:
    """What ``status --check`` reports: an exit status and one line per problem.

    1 when a sink is paused or retrying, or has events pending with no process delivering
    them; else 3 when there are dead letters; else 0.
    """
    failures, dead = [], []
    undelivered = {item["destination"]: item["pending"] for item in report["undelivered"]}
    for name, sink in report["sinks"].items():
        state = sink["failing"]
        if state:
            failures.append(f"{name}: {'paused' if state['paused'] else 'retrying'}")
        elif name in undelivered:
            failures.append(f"{name}: {undelivered[name]:,} pending, no process delivering")
        if sink["dead_letters"]:
            dead.append(f"{name}: {sink['dead_letters']:,} dead letter(s)")
    code = EXIT_FAILURE if failures else EXIT_DEAD_LETTERS if dead else EXIT_OK
    return code, failures + dead


def render(report: dict[str, Any]) -> str:
    """The human-readable status."""
    lines = [f"Outbox: {report['outbox']}"]
    if not report["exists"]:
        lines.append("  (no outbox file yet: nothing has been sent through it)")
        return "\n".join(lines)
    if report.get("problem"):
        lines.append(f"  {report['problem']}")
    totals = report["totals"]
    lines.append(
        f"  pending {totals['pending']:,}  in flight {totals['in_flight']:,}  "
        f"dead letters {totals['dead_letters']:,}"
    )
    if report["sinks"]:
        width = max(len("DESTINATION"), *(len(name) for name in report["sinks"]))
        lines.append("")
        lines.append(
            f"{'DESTINATION':{width}}  {'PENDING':>9}  {'IN FLIGHT':>9}  {'OLDEST':>7}  "
            f"{'DEAD':>7}  DELIVERED BY"
        )
        for name, sink in report["sinks"].items():
            by = ", ".join(sink["served_by"]) or "-"
            lines.append(
                f"{name:{width}}  {sink['pending']:>9,}  {sink['in_flight']:>9,}  "
                f"{_when(sink['oldest_pending_age']):>7}  {sink['dead_letters']:>7,}  {by}"
            )
    if report["undelivered"]:
        lines.append("")
        for item in report["undelivered"]:
            lines.append(
                f"{item['pending']:,} pending for {item['destination']}, no process delivering"
            )
        lines.append(
            "A process whose sink has that destination delivers them when it runs; or move "
            "them (eventsink outbox move FROM TO) or drop them (eventsink outbox drop DEST)."
        )
    failing = {name: sink["failing"] for name, sink in report["sinks"].items() if sink["failing"]}
    if failing:
        lines.append("")
        lines.append("Failing now:")
        now = time.time()
        for name, state in failing.items():
            since = _when(now - state["since"]) if state["since"] else "?"
            how = "PAUSED until the cause is fixed" if state["paused"] else "retrying"
            status = f" [{state['status']}]" if state["status"] is not None else ""
            lines.append(
                f"  {name}: {how}, {state['attempts']} attempt(s) over {since}{status}: "
                f"{state['last_error']}"
            )
    if report["dead_letters"]:
        lines.append("")
        lines.append("Dead letters by destination and error:")
        for group in report["dead_letters"]:
            status = f" [{group['status']}]" if group["status"] is not None else ""
            lines.append(f"  {group['count']:>7,}  {group['sink']}{status}: {group['error']}")
        lines.append("Replay them after fixing the cause: eventsink replay --dead")
    return "\n".join(lines)


@click.command(
    epilog="""
\b
Examples:
  eventsink status
  eventsink status --json | jq .totals
  eventsink status --outbox /var/lib/app/outbox.db
  eventsink status --prometheus > /var/lib/node_exporter/eventsink.prom
  eventsink status --check -q || echo "eventsink needs attention"
"""
)
@click.option(
    "--outbox",
    type=click.Path(dir_okay=False),
    help="Outbox file to inspect; default: the shared outbox in the user data directory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option(
    "--prometheus",
    is_flag=True,
    help="Print the outbox's gauges in the Prometheus text format (for node_exporter's "
    "textfile collector).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 if a sink is paused, retrying or has events no process delivers, 3 if "
    "there are dead letters, 0 if all is well (for cron and monitoring).",
)
@output_options
def status(
    outbox: str | None, as_json: bool, prometheus: bool, check: bool, verbose: int, quiet: bool
) -> None:
    """Show what the outbox holds: pending events, dead letters, failing sinks.

    Per destination (where a sink delivers, e.g. 'sqlite /home/ada/events.db'): events
    pending, in flight (leased by a running process), the age of the oldest pending one, dead
    letters, and the running processes' sinks that deliver there; then destinations with
    pending events that no running process delivers to, destinations whose current batch is
    failing with the last error, and dead letters grouped by destination and error. Reads the
    outbox file (upgrading one written by an older eventsink); works whether or not a process
    is delivering from it.

    Exit status: 0; with --check, 1 when a destination is paused or retrying or has pending
    events no process delivers, 3 when there are dead letters (and nothing worse); 1 when the
    file is not an outbox.
    """
    path = outbox_path({"outbox": outbox})
    try:
        report = asyncio.run(read_status(path))
    except sqlite3.DatabaseError as error:
        raise click.ClickException(f"cannot read the outbox {path}: {error}") from None
    if prometheus:
        click.echo(prometheus_report(report), nl=False)
    elif as_json:
        click.echo(dumps(report))
    elif not quiet:
        click.echo(render(report))
    if not check:
        return
    code, found = problems(report)
    if not quiet:
        verdict = "ok" if code == EXIT_OK else "needs attention"
        click.echo(f"eventsink status: {verdict}", err=True)
        for line in found:
            click.echo(f"  {line}", err=True)
    sys.exit(code)


def prometheus_report(report: dict[str, Any]) -> str:
    """The gauges an outbox file holds (pending, oldest age, paused, dead letters).

    Counters such as delivered events live in the delivering process: scrape its
    ``metrics_addr`` or Datasette's ``/-/eventsink/metrics`` for those.
    """
    sinks = {
        name: {
            "pending": sink["pending"],
            "in_flight": sink["in_flight"],
            "oldest_pending_age": sink["oldest_pending_age"],
            "dead_letters": sink["dead_letters"],
            "paused": bool(sink["failing"] and sink["failing"]["paused"]),
        }
        for name, sink in report["sinks"].items()
    }
    families = [family for family in samples({"sinks": sinks}) if family.samples]
    return prometheus_text(families)
