"""Ctrl-C and SIGTERM end a build the same way: an exception that unwinds through every staging
folder's cleanup, then one line and exit status 128 + the signal number (130 for Ctrl-C).

Library code can swallow that exception (coremltools' torch frontend has bare `except:` clauses),
so the signal is also remembered, and raised again at the next stage boundary and before
publishing: an interrupted build never completes.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

_received: list[int] = []  # signals received while an interruptible block runs


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that `finally` blocks remove what is half-written."""


@contextmanager
def interruptible():
    """While open, SIGINT and SIGTERM raise in the main thread (elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()


def raise_if_interrupted() -> None:
    """Raise again a signal received earlier, in case library code swallowed its exception."""
    if _received:
        raise _exception(_received[-1])


def report_interrupt(exc: KeyboardInterrupt, hint: str) -> int:
    """Print the one line for an interrupted run; returns its exit status."""
    received = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
    print(f"error: interrupted by {received.name} ({hint})", file=sys.stderr)
    return 128 + received


def _interrupt(signum, frame):
    _received.append(signum)
    raise _exception(signum)


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
