"""Signals as exceptions: SIGINT, SIGTERM and SIGHUP unwind the run like an error, so temporary outputs are removed.

Stdlib only: the command line installs these handlers before it imports torch, so a signal during the
slow start-up imports is one line too, not a traceback. Exit status ``128 + signal number``: 130 for
SIGINT, 143 for SIGTERM, 129 for SIGHUP.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["HANDLED", "Interrupted", "deferred", "signals_raise"]

HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(BaseException):
    """A handled signal arrived. A BaseException, so that no library's ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


_state: dict = {"depth": 0, "raised": False, "deferring": 0, "pending": None}


def _handler(signum: int, frame: object) -> None:
    if _state["raised"]:  # already unwinding: let the clean-up finish, the first signal decides the exit status
        return
    if _state["deferring"]:  # inside a critical section: raise when it ends
        _state["pending"] = _state["pending"] or signum
        return
    _state["raised"] = True
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block (main thread only), the first handled signal raises :class:`Interrupted`; later ones are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _state["depth"] == 0:
        _state.update(raised=False, pending=None)
    _state["depth"] += 1
    previous = {s: signal.signal(s, _handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _state["depth"] -= 1


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold the handled signals back for a short critical section (renaming outputs); they arrive right after it.

    Our handler only notes a signal that arrives meanwhile (the process may have other threads, so
    blocking it in this thread alone is not enough); with Python's default handlers installed, the
    signals are blocked in this thread instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    block = hasattr(signal, "pthread_sigmask") and any(signal.getsignal(s) is not _handler for s in HANDLED)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED) if block else None
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    pending = _state["pending"]
    if pending and not _state["deferring"] and not _state["raised"]:
        _state.update(pending=None, raised=True)
        raise Interrupted(pending)
