"""Ctrl-C and SIGTERM end a run the same way: an exception that unwinds through every staging
folder's cleanup, then one line and exit status 128 + the signal number (130 for Ctrl-C)."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that `finally` blocks remove what is half-written."""


@contextmanager
def sigterm_as_interrupt():
    """While open, SIGTERM raises Terminated in the main thread (elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_interrupt(exc: KeyboardInterrupt, hint: str) -> int:
    """Print the one line for an interrupted run; returns its exit status."""
    received = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
    print(f"error: interrupted by {received.name} ({hint})", file=sys.stderr)
    return 128 + received


def _raise_terminated(signum, frame):
    raise Terminated()
