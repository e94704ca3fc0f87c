"""Progress while work runs: a line per component and stage, bars over long countable loops, and
the summary table at the end. `--quiet` (SDBUILD_QUIET=1) keeps only summaries and errors."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, TextIO, TypeVar

from sdbuild.environ import scoped_environ
from sdbuild.interrupts import raise_if_interrupted
from sdbuild.memory import PeakMemory

if TYPE_CHECKING:
    from sdbuild.manifest import Manifest

# An environment variable rather than a flag object, so multirun workers inherit it.
QUIET_ENV = "SDBUILD_QUIET"
T = TypeVar("T")


def is_quiet() -> bool:
    return os.environ.get(QUIET_ENV) == "1"


def quiet_mode(enabled: bool):
    """Progress off (``enabled``) for the duration, as `--quiet` asks."""
    return scoped_environ(QUIET_ENV, "1" if enabled else None)


def bar(items: Iterable[T], desc: str, total: int | None = None, stream: TextIO | None = None) -> Iterable[T]:
    """``items`` with a tqdm bar on a terminal; the plain iterable under --quiet or in logs (no TTY)."""
    stream = stream or sys.stderr
    if is_quiet() or not stream.isatty():
        return items
    return _tqdm(items, desc=desc, total=total, file=stream)


@contextmanager
def counter(total: int, desc: str, stream: TextIO | None = None):
    """A bar for work counted inside someone else's loop: call the yielded function once per item."""
    stream = stream or sys.stderr
    if is_quiet() or not stream.isatty():
        yield lambda: None
        return
    with _tqdm(total=total, desc=desc, file=stream) as progress:
        yield progress.update


def _tqdm(*args, **kwargs):
    from tqdm import tqdm

    # disable=False: entry points set TQDM_DISABLE to mute coremltools' per-pass bars, not ours.
    return tqdm(*args, leave=False, disable=False, dynamic_ncols=True, **kwargs)


@dataclass
class StageTimer:
    """Prints `[i/n] component  stage ...  seconds` and keeps each stage's seconds and the
    process's peak resident memory while it ran (GB)."""

    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    peaks_gb: dict[str, dict[str, float]] = field(default_factory=dict)
    memory: PeakMemory = field(default_factory=PeakMemory)
    quiet: bool = field(default_factory=is_quiet)

    def _line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self._line(text)

    def summary(self, text: str) -> None:
        """Printed under --quiet too: what was built."""
        print(text, file=self.stream, flush=True)

    @contextmanager
    def stage(self, index: int, component: str, stage: str, detail: str = ""):
        prefix = f"[{index}/{self.total}] {component:<15} {stage:<9}"
        raise_if_interrupted()
        self._line(f"{prefix} ...{' ' + detail if detail else ''}")
        start = time.perf_counter()
        with self.memory.window() as memory:
            yield
        raise_if_interrupted()  # a stage's libraries may have swallowed Ctrl-C or SIGTERM
        seconds = time.perf_counter() - start
        self.timings.setdefault(component, {})[stage] = round(seconds, 3)
        self.peaks_gb.setdefault(component, {})[stage] = round(memory.peak_bytes / 1e9, 2)
        self._line(f"{prefix} done in {seconds:.1f}s")

    def record(self, component: str, stage: str, seconds: float) -> None:
        self.timings.setdefault(component, {})[stage] = round(seconds, 3)


def build_summary_table(manifest: "Manifest", timings: dict[str, dict[str, float]],
                        peaks_gb: dict[str, dict[str, float]]) -> str:
    """One row per component: file, size, compression, lowest PSNR, seconds, peak memory."""
    rows = []
    for name, info in manifest.components.items():
        psnr = min((o.psnr_db for o in info.verification.outputs), default=None)
        rows.append([
            name,
            info.file,
            f"{info.bytes / 1e6:.1f}",
            info.compression.mode,
            "-" if psnr is None else f"{psnr:.1f}",
            f"{sum(timings.get(name, {}).values()):.1f}",
            f"{max(peaks_gb[name].values()):.2f}" if peaks_gb.get(name) else "-",  # "-": all cached
        ])
    return format_table(["component", "file", "MB", "compression", "PSNR dB", "seconds", "peak GB"], rows)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with columns sized to their widest cell; numbers right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def fmt(row):
        cells = []
        for cell, width in zip(row, widths):
            text = str(cell)
            cells.append(text.rjust(width) if _is_number(text) else text.ljust(width))
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in rows)])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
