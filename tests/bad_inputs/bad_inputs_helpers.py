"""Shared helpers of the bad-input corpus: run the real CLI in a subprocess (with its own temp
folder, so leaked temp files are seen), interrupt it at a named progress line, and check that a
failure left nothing behind. (A module name unique in the suite, unlike conftest.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from sdbuild.cache import BuildCache, CorruptEntryWarning

ROOT = Path(__file__).resolve().parents[2]
# A tiny build with one small component: enough to reach every stage in seconds.
SMALL_BUILD = ["components=[vae_encoder]"]


@dataclass
class Workspace:
    """Where one case's command writes: outputs, cache and the temp folder it is given."""

    root: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def build_args(self, *overrides: str, cache: Path | None = None) -> list[str]:
        return [f"output.dir={self.out}", f"cache.dir={cache or self.cache}", *overrides]

    def env(self, **extra: str) -> dict[str, str]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "TMPDIR": str(self.tmp), "OMP_NUM_THREADS": "1", **extra}


def run_cli(args: list[str], workspace: Workspace, *, module: str = "sdbuild", env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m <module> args` from the repository root, with the workspace's temp folder."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          env=workspace.env(**(env or {})), timeout=timeout)


def interrupt_at(args: list[str], workspace: Workspace, progress: str, sig: int = signal.SIGKILL,
                 delay: float = 0.2) -> tuple[int, str]:
    """Start a build, send ``sig`` once a progress line contains ``progress``; (exit status, stderr).

    Fails the test if the build ends before that line (the fault was not injected).
    """
    process = subprocess.Popen([sys.executable, "-m", "sdbuild", *args], stderr=subprocess.PIPE, text=True,
                               cwd=ROOT, env=workspace.env())
    seen = []
    for line in process.stderr:
        seen.append(line)
        if progress in line:
            # Let the stage get going, so the fault lands inside it, not at its first line.
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(sig)
            break
    seen.append(process.stderr.read())
    status = process.wait(timeout=120)
    stderr = "".join(seen)
    assert any(progress in line for line in seen), f"never reached {progress!r}:\n{stderr[-2000:]}"
    return status, stderr


def assert_one_line_error(stderr: str, *words: str) -> str:
    """The last line is `error: ...` naming every word, and no traceback was printed."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


def published_builds(out: Path) -> list[Path]:
    """Build folders under an output root (hidden staging excluded)."""
    return [p for p in out.glob("*/*") if p.is_dir() and not p.name.startswith(".")] if out.exists() else []


def staging_left(out: Path) -> list[Path]:
    return sorted(out.rglob(".*.partial*")) if out.exists() else []


def assert_cache_sound(cache_dir: Path) -> None:
    """Every entry re-hashes to its record, and no staging of a finished process remains."""
    if not cache_dir.exists():
        return
    cache = BuildCache(cache_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptEntryWarning)
        for entry in cache.entries():
            assert cache.get(entry.key) is not None, entry.key
    assert not any((cache_dir / "staging").iterdir()), list((cache_dir / "staging").iterdir())


def assert_nothing_left(workspace: Workspace, *, cache_dir: Path | None = None) -> None:
    """No build folder, no staging, no temp file, and a sound cache."""
    assert published_builds(workspace.out) == []
    assert staging_left(workspace.out) == []
    leaked = sorted(workspace.tmp.iterdir()) if workspace.tmp.exists() else []
    assert leaked == [], f"temp files left in the temp folder: {leaked}"
    assert_cache_sound(cache_dir or workspace.cache)
