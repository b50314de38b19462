"""Every pluggy hook of eventsink, with when it runs and what it returns.

Plugins implement these with ``@eventsink.hookimpl`` and are found through the ``eventsink``
entry-point group, exactly like the built-in sinks. Hook implementations may accept any subset
of the arguments shown. Lifecycle hooks may be coroutine functions (they are awaited);
``eventsink_enrich`` and ``eventsink_filter`` run on the writer's thread and must be plain
functions.

Each implementation is called through pluggy on its own (:class:`eventsink.plugins.Hooks`), so
wrappers and hook-call monitoring see every call, and an exception from one is logged with its
plugin's name and changes nothing about delivery.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("eventsink")
hookimpl = pluggy.HookimplMarker("eventsink")


@hookspec
def eventsink_register_sinks() -> list[type] | None:  # type: ignore[empty-body]
    """Return a list of sink classes (subclasses of :class:`eventsink.Sink`) this plugin adds.

    Called once when a pipeline is built and by ``eventsink sinks``. Each class's ``name`` is
    what users put in ``sink:`` or a ``sinks`` entry's ``type``.
    """


@hookspec
def eventsink_register_sources() -> list[type] | None:  # type: ignore[empty-body]
    """Return a list of pull data source classes (subclasses of :class:`eventsink.DataSource`).

    Called by ``eventsink pull`` and ``eventsink sources``; each class's ``name`` is what users
    pass as ``SOURCE``.
    """


@hookspec
def eventsink_enrich(event: Any) -> Any:
    """Change an event before it is stored in the outbox.

    Runs in the thread that wrote the event, after the id, instance and creation time were set.
    Every implementation runs, in hook order, each receiving the previous one's result: return
    a new :class:`eventsink.Event`, or ``None`` after changing ``event`` in place. New data
    values must be JSON-safe (see :func:`eventsink.event.normalise`). An implementation that
    raises is skipped: the event goes on as the previous one left it.
    """


@hookspec
def eventsink_filter(event: Any) -> bool | None:
    """Decide whether an event is kept: return ``False`` to drop it, ``True``/``None`` to keep.

    Runs after every ``eventsink_enrich``. An event any implementation drops is counted under
    the ``filtered`` reason and never stored; an implementation that raises keeps the event.
    """


@hookspec
def eventsink_before_send(sink: str, batch: list[Any]) -> None:
    """Called just before ``batch`` is handed to the sink named ``sink`` (on every attempt).

    An exception is logged and the batch is sent all the same.
    """


@hookspec
def eventsink_batch_sent(sink: str, batch: list[Any]) -> None:
    """Called once the sink named ``sink`` has confirmed ``batch``; it is out of the outbox.

    An exception is logged; the batch stays delivered (it is never sent again for it).
    """


@hookspec
def eventsink_send_error(sink: str, batch: list[Any], error: BaseException, final: bool) -> None:
    """Called when an attempt to deliver ``batch`` fails.

    ``final`` is ``True`` when the events were moved to the dead-letter store (a permanent
    error, or ``max_attempts``/``max_age`` reached) and ``False`` when they will be retried.
    """
