"""The Python client: ``write(table, data)`` from any thread, delivered in the background.

::

    with eventsink.Client(sink="file", path="events.jsonl", instance="web-1") as client:
        client.on("error", lambda sink, batch, error, final: print(error))
        client.write("signups", {"user": "ada", "plan": "pro"})

The client runs a :class:`~eventsink.Pipeline` on a daemon thread with its own event
loop. ``write`` returns the event's id at once: it never waits on the network. ``flush`` waits
until everything written so far is delivered; ``close`` (or leaving the ``with`` block) flushes
with a deadline and stops. A client still open at interpreter exit is closed then, with a
bounded deadline, and logs how many events it could not deliver.

``write(..., wait=True)`` returns only once the event is committed to the outbox (it survives
a crash from then on). A SIGTERM, when the application has not installed its own handler (and
``handle_sigterm`` is on), is treated like Ctrl-C: the main thread stops with
``SystemExit(143)`` (after the ``write()`` it may be in has returned), and the exit closes the
client, which commits what was accepted and delivers it within the exit deadline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any

import pluggy

from .builder import build
from .config import Option
from .exceptions import ClosedError
from .hookspecs import hookimpl
from .pipeline import signals
from .pipeline.runner import PipelineRunner
from .plugins import make_plugin_manager

logger = logging.getLogger("eventsink")

HANDLER_KINDS = ("send", "flush", "error")

#: Options only the Python client has (see the configuration reference).
CLIENT_OPTIONS: tuple[Option, ...] = (
    Option(
        "handle_sigterm",
        bool,
        True,
        "On SIGTERM (unless the application handles it), exit like Ctrl-C: commit and deliver "
        "what write() accepted within the exit deadline. false: leave SIGTERM alone.",
        nullable=False,
    ),
)


class _Handlers:
    """Plugin object turning lifecycle hooks into calls of the client's handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Callable[..., Any]]] = {kind: [] for kind in HANDLER_KINDS}

    def call(self, kind: str, *args: Any) -> None:
        for handler in list(self.handlers[kind]):
            try:
                handler(*args)
            except Exception:
                logger.exception("eventsink %r handler %r raised", kind, handler)

    @hookimpl
    def eventsink_batch_sent(self, sink: str, batch: list[Any]) -> None:
        self.call("send", sink, batch)

    @hookimpl
    def eventsink_send_error(
        self, sink: str, batch: list[Any], error: BaseException, final: bool
    ) -> None:
        self.call("error", sink, batch, error, final)


class Client:
    """Send events through eventsink from ordinary (threaded) Python code.

    Keyword arguments are the configuration (see the configuration reference): ``sink`` and
    its options, ``instance``, ``batch_limit``, ``outbox`` and so on. ``config`` may give the
    same as a dict; keyword arguments win. ``pm`` injects a plugin manager (tests).
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        pm: pluggy.PluginManager | None = None,
        **options: Any,
    ) -> None:
        self.pm = pm or make_plugin_manager()
        self._handlers = _Handlers()
        self.pm.register(self._handlers)
        try:
            self.pipeline = build(
                {**(config or {}), **options},
                entry_point="client",
                pm=self.pm,
                extra_options=CLIENT_OPTIONS,
            )
            self._runner = PipelineRunner(self.pipeline, name="eventsink-client").start()
        except BaseException:
            self.pm.unregister(self._handlers)
            raise
        self.settings = self.pipeline.settings
        if self.settings.extra["handle_sigterm"]:
            signals.install_sigterm_exit()

    def __repr__(self) -> str:
        state = "closed" if self._runner.closed else "open"
        sinks = list(self.pipeline.sinks)
        return f"<Client {state} instance={self.settings.instance!r} sinks={sinks!r}>"

    # -- the API ---------------------------------------------------------------------------

    def write(
        self,
        table: str,
        data: Mapping[str, Any],
        *,
        wait: bool = False,
        sinks: Collection[str] | None = None,
    ) -> str | None:
        """Queue one event for ``table``; return its id, or ``None`` if a filter dropped it.

        ``sinks`` sends it only to the sinks of those names (from a ``sinks`` list config)
        instead of to all of them.

        With ``wait=True`` it returns only once the event is committed to the outbox, so it
        survives a crash or a SIGTERM from then on (a durable outbox; about one commit of
        latency). Without, up to ``max_uncommitted`` accepted events live in memory only
        until the next commit, a few milliseconds later.

        Raises :class:`~eventsink.exceptions.EventError` (naming the field) for data JSON
        cannot hold or a sink name the client does not have,
        :class:`~eventsink.exceptions.ClosedError` after :meth:`close`, and with ``wait=True``
        :class:`~eventsink.exceptions.OutboxError` when the outbox could not store it.
        """
        if self._runner.closed:
            raise ClosedError("this client is closed")
        state = signals.STATE
        main = state.installed and threading.get_ident() == signals.MAIN_THREAD_ID
        if main:
            state.writing += 1  # a SIGTERM now is held until this write returns
        try:
            if wait:
                return self._run(
                    self.pipeline.write_async(table, data, wait_committed=True, sinks=sinks)
                )
            return self.pipeline.write(table, data, sinks=sinks)
        finally:
            if main:
                state.writing -= 1
                if state.pending and not state.writing:
                    state.exit()

    def on(self, kind: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``handler`` on ``"send"``, ``"flush"`` or ``"error"``; returns ``handler``.

        * ``send(sink, batch)``: a sink confirmed ``batch`` (a list of events);
        * ``error(sink, batch, error, final)``: an attempt failed; ``final`` means the events
          went to the dead-letter store, otherwise they will be retried;
        * ``flush(delivered)``: a :meth:`flush` finished; ``delivered`` is ``True`` when
          everything was delivered in time.

        Handlers run on the client's background thread and must not block for long.
        """
        if kind not in HANDLER_KINDS:
            raise ValueError(
                f"unknown handler kind {kind!r}; use one of {', '.join(HANDLER_KINDS)}"
            )
        self._handlers.handlers[kind].append(handler)
        return handler

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far is delivered (or dead-lettered).

        Returns ``False`` if ``timeout`` seconds passed first.
        """
        if self._runner.closed:
            return True
        delivered = self._runner.flush(timeout)
        self._handlers.call("flush", delivered)
        return delivered

    def status(self) -> dict[str, Any]:
        """A snapshot of the pipeline: per sink pending, delivered, errors, pauses."""
        return self._run(self.pipeline.status())

    def _run(self, coroutine: Any, timeout: float | None = None) -> Any:
        """Run ``coroutine`` on the client's loop (status, and tests reaching the outbox)."""
        return self._runner.run(coroutine, timeout)

    def close(self, timeout: float | None = 10.0) -> int:
        """Deliver what can be delivered within ``timeout`` seconds, then stop.

        Returns the number of events left undelivered (kept in a durable outbox for the next
        start). Safe to call twice.
        """
        try:
            return self._runner.close(timeout)
        finally:
            if self.pm.is_registered(self._handlers):
                self.pm.unregister(self._handlers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
