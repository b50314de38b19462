"""The status pages the Datasette plugin adds: ``/-/eventsink`` and ``/-/eventsink.json``.

Both need the ``eventsink-view`` permission (the root actor has it; anonymous users get 403).
The replay button posts to ``/-/eventsink/replay`` and needs ``eventsink-replay``; Datasette's
cross-origin protection middleware guards every POST against CSRF. Nothing shown here contains
a secret: sinks describe themselves without tokens and scrub them from error messages.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from typing import Any

from datasette.utils.asgi import Forbidden, Response

DEAD_LETTER_LIMIT = 20


async def _ensure(datasette: Any, request: Any, action: str) -> None:
    if not await datasette.allowed(action=action, actor=request.actor):
        raise Forbidden(f"You need the {action} permission to see this page")


def _when(seconds: float | None) -> str | None:
    if not seconds:
        return None
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    return moment.isoformat(timespec="seconds")


async def status_document(datasette: Any) -> dict[str, Any]:
    """The JSON status of the plugin for ``datasette``: per sink counts, errors, dead letters."""
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
    letters = await pipeline.outbox.dead_letters(limit=DEAD_LETTER_LIMIT * len(pipeline.lanes))
    for name, sink in document["sinks"].items():
        sink["last_success_at"] = _when(sink["last_success"])
        error = sink["last_error"]
        if error:
            error["at"] = _when(error.get("time"))
        sink["recent_dead_letters"] = [
            {
                "id": letter.event.id,
                "table": letter.event.table,
                "created": letter.event.created,
                "status": letter.failure.status,
                "error": letter.failure.message,
                "attempts": letter.failure.attempts,
            }
            for letter in letters
            if letter.sink == name
        ][:DEAD_LETTER_LIMIT]
    document.update(
        active=True,
        config_source=state.config_source if state else None,
        table=state.table if state else None,
        outbox_location=state.outbox_note if state else None,
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
            {"status": document, "can_replay": can_replay},
            request=request,
        )
    )


def _template_source() -> str:
    return (
        resources.files("eventsink.datasette") / "templates" / "eventsink_status.html"
    ).read_text()


async def replay(datasette: Any, request: Any) -> Response:
    """Move a sink's dead letters back to be delivered (POST ``sink``; empty: every sink)."""
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
        moved = await pipeline.replay(sink=sink)
        count = sum(moved.values())
        datasette.add_message(
            request, f"{count} dead letter(s) queued for delivery again", datasette.INFO
        )
    return Response.redirect(datasette.urls.path("/-/eventsink"))


ROUTES = [
    (r"^/-/eventsink\.json$", status_json),
    (r"^/-/eventsink$", status_html),
    (r"^/-/eventsink/replay$", replay),
]
