"""Settings that child processes (multirun workers) must inherit travel as environment variables."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def scoped_environ(name: str, value: str | None):
    """``name`` set to ``value`` for the duration (unchanged when None), then restored."""
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
