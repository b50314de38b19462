"""SIGTERM treated like Ctrl-C for processes that write through :class:`eventsink.Client`.

A process stopped with SIGTERM (``docker stop``, systemd, Kubernetes) dies at once by default:
events ``write()`` accepted but the outbox had not committed yet are lost. When the
application has not installed a SIGTERM handler of its own, the client installs
:func:`install_sigterm_exit`'s: it raises ``SystemExit(143)`` in the main thread, as Ctrl-C
raises ``KeyboardInterrupt``, so ``finally`` blocks run and the exit handler of
:mod:`eventsink.pipeline.runner` closes every open pipeline within its deadline, committing
and delivering what was accepted. A second SIGTERM ends the process the default way.

The exit is never raised in the middle of ``write()`` (which could leave the intake's counts
half updated): a SIGTERM that arrives while the main thread writes is held until that write
returns (``Client.write`` counts itself in :data:`STATE` while the handler is installed).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger("eventsink")

EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM

MAIN_THREAD_ID = threading.main_thread().ident


class _SigtermExit:
    """The handler's state: installed or not, the main thread inside a write, an exit held."""

    def __init__(self) -> None:
        self.installed = False
        self.writing = 0  # write() calls in progress on the main thread
        self.pending = False

    def handle(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
        if self.writing:
            self.pending = True  # raised when the write returns
            return
        self.exit()

    def exit(self) -> None:
        self.pending = False
        logger.warning("eventsink: SIGTERM received; exiting after committing accepted events")
        raise SystemExit(EXIT_STATUS)


#: The one handler state of this process.
STATE = _SigtermExit()


def install_sigterm_exit() -> bool:
    """Handle SIGTERM as described above; return whether this process now does.

    Does nothing off the main thread (Python allows handlers only there) or when the
    application already handles SIGTERM (any handler other than the default).
    """
    if STATE.installed:
        return True
    if threading.get_ident() != MAIN_THREAD_ID:
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False  # the application has its own plan for SIGTERM
    signal.signal(signal.SIGTERM, STATE.handle)
    STATE.installed = True
    return True
