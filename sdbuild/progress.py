"""Progress lines per component and stage while a build runs, and the summary table at the end."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from sdbuild.manifest import Manifest


@dataclass
class StageTimer:
    """Prints `[i/n] component  stage ...  seconds` and keeps each stage's seconds."""

    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self._line(text)

    @contextmanager
    def stage(self, index: int, component: str, stage: str, detail: str = ""):
        prefix = f"[{index}/{self.total}] {component:<15} {stage:<9}"
        self._line(f"{prefix} ...{' ' + detail if detail else ''}")
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.timings.setdefault(component, {})[stage] = round(seconds, 3)
        self._line(f"{prefix} done in {seconds:.1f}s")

    def record(self, component: str, stage: str, seconds: float) -> None:
        self.timings.setdefault(component, {})[stage] = round(seconds, 3)


def build_summary_table(manifest: "Manifest", timings: dict[str, dict[str, float]]) -> str:
    """One row per component: file, size, compression, lowest PSNR, seconds."""
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
        ])
    return format_table(["component", "file", "MB", "compression", "PSNR dB", "seconds"], rows)


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
