"""The status pages the Datasette plugin adds: ``/-/eventsink`` and ``/-/eventsink.json``.

Both need the ``eventsink-view`` permission (the root actor has it; anonymous users get 403).
The replay button posts to ``/-/eventsink/replay`` and needs ``eventsink-replay``; Datasette's
cross-origin protection middleware guards every POST against CSRF. Nothing shown here contains
a secret: sinks describe themselves without tokens and scrub them from error messages.
"""

from __future__ import annotations

import datetime as dt
import time
from importlib import resources
from typing import Any

from datasette.utils.asgi import Forbidden, Response
from markupsafe import Markup

from ..metrics import CONTENT_TYPE
from .chart import series_svg

DEAD_LETTER_LIMIT = 20
#: Most dead letters of one sink read to group them by error; counts beyond it are the total's.
DEAD_LETTER_SCAN = 10_000
REFRESH_SECONDS = 5


async def _ensure(datasette: Any, request: Any, action: str) -> None:
    if not await datasette.allowed(action=action, actor=request.actor):
        raise Forbidden(f"You need the {action} permission to see this page")


def _when(seconds: float | None) -> str | None:
    if not seconds:
        return None
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    return moment.isoformat(timespec="seconds")


def ago(seconds: float | None) -> str:
    """``seconds`` of age as a person says it: "just now", "3 min ago", "2 h ago"."""
    if seconds is None:
        return "never"
    if seconds < 5:
        return "just now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def group_dead_letters(letters: list[Any]) -> list[dict[str, Any]]:
    """Dead letters grouped by (status, error), largest group first."""
    groups: dict[tuple[Any, str], dict[str, Any]] = {}
    for letter in letters:
        key = (letter.failure.status, letter.failure.message)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "status": key[0],
                "error": key[1],
                "count": 0,
                "first_id": letter.event.id,
                "last_id": letter.event.id,
                "last_failure": letter.failure.last_failure,
            }
        group["count"] += 1
        group["first_id"] = min(group["first_id"], letter.event.id)
        group["last_id"] = max(group["last_id"], letter.event.id)
        group["last_failure"] = max(group["last_failure"], letter.failure.last_failure)
    return sorted(groups.values(), key=lambda group: -group["count"])


async def status_document(datasette: Any) -> dict[str, Any]:
    """The JSON status of the plugin for ``datasette``: per sink counts, errors, dead letters.

    Each sink has a ``state`` (ok, retrying, paused, idle), its last hour as ``series`` and its
    dead letters grouped by error (``dead_letter_groups``) besides the latest ones.
    """
    from .plugin import get_state

    state = get_state(datasette)
    pipeline = state.pipeline if state else None
    if pipeline is None:
        return {
            "active": False,
            "config_source": state.config_source if state else None,
            "sinks": {},
        }
    document = await pipeline.status()
    document["hook_errors"] = state.hook_errors  # events track_event could not record
    now = time.time()
    for sink in document["sinks"].values():
        sink["last_success_at"] = _when(sink["last_success"])
        error = sink["last_error"]
        if error:
            error["at"] = _when(error.get("time"))
        try:
            letters = (
                await pipeline.outbox.dead_letters(sink["destination"], limit=DEAD_LETTER_SCAN)
                if sink["dead_letters"]
                else []
            )
        except Exception:  # the outbox cannot be read (disk full): the page still renders
            letters = []
        sink["recent_dead_letters"] = [
            {
                "id": letter.event.id,
                "table": letter.event.table,
                "created": letter.event.created,
                "status": letter.failure.status,
                "error": letter.failure.message,
                "attempts": letter.failure.attempts,
            }
            for letter in letters[:DEAD_LETTER_LIMIT]
        ]
        sink["dead_letter_groups"] = group_dead_letters(letters)
        sink["delivered_per_minute"] = round(sink["rate"] * 60, 1)
        sink["last_error_age"] = now - error["time"] if error and error.get("time") else None
    document.update(
        active=True,
        config_source=state.config_source if state else None,
        table=state.table if state else None,
        outbox_location=state.outbox_note if state else None,
        generated=now,
    )
    return document


async def status_json(datasette: Any, request: Any) -> Response:
    await _ensure(datasette, request, "eventsink-view")
    return Response.json(await status_document(datasette))


async def status_html(datasette: Any, request: Any) -> Response:
    await _ensure(datasette, request, "eventsink-view")
    document = await status_document(datasette)
    can_replay = await datasette.allowed(action="eventsink-replay", actor=request.actor)
    # The template ships inside the eventsink package; Datasette only finds templates of
    # plugins that are packages, so it is compiled in the request's own environment (which
    # resolves {% extends "base.html" %}).
    environment = datasette.get_jinja_environment(request)
    template = environment.from_string(_template_source())
    return Response.html(
        await datasette.render_template(
            template,
            {
                "status": document,
                "can_replay": can_replay,
                "charts": {
                    name: Markup(
                        series_svg(
                            sink["series"], f"{name}: the last hour", document.get("started")
                        )
                    )
                    for name, sink in document.get("sinks", {}).items()
                },
                "ago": ago,
                "refresh_seconds": REFRESH_SECONDS,
            },
            request=request,
        )
    )


def _template_source() -> str:
    return (
        resources.files("eventsink.datasette") / "templates" / "eventsink_status.html"
    ).read_text()


async def replay(datasette: Any, request: Any) -> Response:
    """Move dead letters back to be delivered.

    POST ``sink`` (empty: every sink) and, to replay one group of the status page, ``error``
    (the group's message) with ``status`` (its HTTP status, empty for none).
    """
    from .plugin import get_pipeline

    if request.method != "POST":
        return Response.text("POST to replay dead letters", status=405)
    await _ensure(datasette, request, "eventsink-replay")
    pipeline = get_pipeline(datasette)
    form = await request.post_vars()
    sink = form.get("sink") or None
    if pipeline is None:
        datasette.add_message(request, "eventsink is not active", datasette.ERROR)
    elif sink is not None and sink not in pipeline.lanes:
        datasette.add_message(request, f"No sink named {sink!r}", datasette.ERROR)
    else:
        ids = None
        if "error" in form:
            status = form.get("status") or None
            wanted = (int(status) if status and status.isdigit() else status, form["error"])
            destination = pipeline.lanes[sink].destination if sink is not None else None
            letters = await pipeline.outbox.dead_letters(destination, limit=DEAD_LETTER_SCAN)
            ids = [
                letter.event.id
                for letter in letters
                if (letter.failure.status, letter.failure.message) == wanted
            ]
        moved = await pipeline.replay(sink=sink, ids=ids) if ids != [] else {}
        count = sum(moved.values())
        datasette.add_message(
            request, f"{count} dead letter(s) queued for delivery again", datasette.INFO
        )
    return Response.redirect(datasette.urls.path("/-/eventsink"))


async def metrics(datasette: Any, request: Any) -> Response:
    """Prometheus metrics (``eventsink-view``; scrapers send ``Authorization: Bearer TOKEN``)."""
    from .plugin import get_pipeline

    await _ensure(datasette, request, "eventsink-view")
    pipeline = get_pipeline(datasette)
    text = await pipeline.prometheus() if pipeline is not None else ""
    return Response(text, content_type=CONTENT_TYPE)


async def menu_links(datasette: Any, actor: Any) -> list[dict[str, str]]:
    """A "Delivery status" link in Datasette's menu for actors who may view the page."""
    if not await datasette.allowed(action="eventsink-view", actor=actor):
        return []
    return [{"href": datasette.urls.path("/-/eventsink"), "label": "eventsink delivery status"}]


ROUTES = [
    (r"^/-/eventsink\.json$", status_json),
    (r"^/-/eventsink$", status_html),
    (r"^/-/eventsink/replay$", replay),
    (r"^/-/eventsink/metrics$", metrics),
]
