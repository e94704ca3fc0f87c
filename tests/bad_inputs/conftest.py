"""Fixtures of the bad-input corpus (helpers: bad_inputs_helpers.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from bad_inputs_helpers import Workspace


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    """A private output folder, cache and temp folder for one case."""
    return Workspace(tmp_path)


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid
