"""Signals: SIGINT, SIGTERM and SIGHUP end a run with one line and status ``128 + signal number``
(130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP), never a traceback and never a partial file.

Stdlib only, so the command line can install its handlers before it imports torch:

* :func:`exit_on_signal` -- during the start-up imports: one line and an immediate exit (nothing has
  been written yet, and an import cut short must not be resumed or cleaned up);
* :func:`signals_raise` -- during the run: the signal raises :class:`Interrupted` where the main thread
  is, so the run unwinds like an error and its temporary outputs are removed;
* :func:`deferred` -- around the few statements that must not be cut (renaming the outputs into place,
  removing the temporaries): a signal that arrives meanwhile is raised right after them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import Interrupted

__all__ = ["HANDLED", "Interrupted", "deferred", "exit_on_signal", "signals_raise"]

HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


_state: dict = {"deferring": 0, "pending": None}


def _raise(signum: int, frame: object) -> None:
    if _state["deferring"]:  # inside a critical section: raise when it ends
        _state["pending"] = _state["pending"] or signum
        return
    raise Interrupted(signum)  # every time: a library that swallowed the first one does not swallow the next


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _handlers(handler, after: Any = None) -> Iterator[None]:
    """``handler`` for every handled signal within the block; then the previous handlers, or ``after``."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if after is None else after)


def exit_on_signal(message: str, after: Any = None) -> contextlib.AbstractContextManager[None]:
    """Within the block, a handled signal prints ``message`` (``{signal}`` is its name) and exits at once.

    ``after`` (e.g. ``signal.SIG_IGN``) replaces the handlers the block found when it ends: restoring the
    default ones would let a late signal kill a process whose outputs are complete.
    """

    def leave(signum: int, frame: object) -> None:
        try:
            print(message.format(signal=signal.Signals(signum).name), file=sys.stderr, flush=True)
        finally:
            os._exit(128 + signum)

    return _handlers(leave, after)


def signals_raise() -> contextlib.AbstractContextManager[None]:
    """Within the block (main thread only), a handled signal raises :class:`Interrupted`."""
    _state.update(deferring=0, pending=None)
    return _handlers(_raise)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold the handled signals back for a short critical section; they are raised right after it.

    Our handler only notes a signal that arrives meanwhile (the process may have other threads, so
    blocking it in this thread alone is not enough); with other handlers installed (Python's default
    ones, for a library caller), the signals are blocked in this thread instead.
    """
    if not _main_thread():
        yield
        return
    block = hasattr(signal, "pthread_sigmask") and any(signal.getsignal(s) is not _raise for s in HANDLED)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED) if block else None
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    pending = _state["pending"]
    if pending and not _state["deferring"]:
        _state["pending"] = None
        raise Interrupted(pending)
