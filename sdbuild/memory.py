"""Peak resident memory of this process while a piece of work runs (build-info's stage_peak_gb).

On Linux a daemon thread samples the resident set every 50 ms while any window is open, so windows
that overlap (verification runs behind the next component's conversion) each get their own peak.
Elsewhere a window reports the process's peak so far (getrusage), which only grows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import resource
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_STATM = Path("/proc/self/statm")
_PAGE_BYTES = resource.getpagesize()
SAMPLE_SECONDS = 0.05
# A full collection takes about 0.3 s once torch and coremltools are loaded: worth it for
# real-size models, not for the tiny ones the test suite builds by the hundred.
WORTH_RETURNING_BYTES = 2e9


def resident_bytes() -> int:
    """This process's resident memory now (Linux), or its peak so far (elsewhere)."""
    if _STATM.exists():
        return int(_STATM.read_text().split()[1]) * _PAGE_BYTES
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def return_freed_memory(when_above: float = WORTH_RETURNING_BYTES) -> None:
    """Free what is no longer used and hand it back to the system, so the next stage's peak
    starts lower: coremltools' programs are reference cycles that only the cycle collector frees
    (1.7 GB of float16 weights after the SD 2.1 UNet's conversion), and glibc keeps freed memory
    otherwise (after the UNet's forward pass, about 0.7 GB). Only while this process holds more
    than ``when_above`` bytes."""
    if resident_bytes() < when_above:
        return
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    library = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None  # glibc only


@dataclass(eq=False)  # windows are told apart by identity: two may hold the same peak
class Window:
    peak_bytes: int

    def see(self, resident: int) -> None:
        self.peak_bytes = max(self.peak_bytes, resident)


class PeakMemory:
    """``with peaks.window() as w: ...`` leaves the highest resident memory seen in ``w.peak_bytes``."""

    def __init__(self) -> None:
        self._open: list[Window] = []
        self._lock = threading.Lock()
        self._sampler: threading.Thread | None = None

    @contextmanager
    def window(self):
        window = Window(resident_bytes())
        with self._lock:
            self._open.append(window)
            if self._sampler is None and _STATM.exists():
                self._sampler = threading.Thread(target=self._sample, name="sdbuild-memory", daemon=True)
                self._sampler.start()
        try:
            yield window
        finally:
            window.see(resident_bytes())
            with self._lock:
                self._open.remove(window)

    def _sample(self) -> None:
        while True:
            resident = resident_bytes()
            with self._lock:
                if not self._open:
                    self._sampler = None
                    return
                for window in self._open:
                    window.see(resident)
            time.sleep(SAMPLE_SECONDS)
