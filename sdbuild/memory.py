"""This process's memory: its peak while a piece of work runs (build-info's stage_peak_gb), and
handing freed memory back to the system (glibc).

On Linux a daemon thread samples the resident set every 50 ms while any window is open, so windows
that overlap (verification runs behind the next component's conversion) each get their own peak.
Elsewhere a window reports the process's peak so far (getrusage), which only grows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
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
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
OWN_MAPPING_FROM_BYTES = 1 << 20
# Models with this many bytes of weights or more (the SDXL UNet: 10.3 GB) get their allocations
# mapped; below it (the SD 2.1 UNet: 3.5 GB) mapping costs more time than the memory it saves is
# worth: a verified sd2-base build took 12% longer for the same peak (its conversion's).
MAPPED_FROM_WEIGHT_BYTES = 6e9


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
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


def map_large_allocations(model_weight_bytes: float) -> None:
    """Before running a model with ``model_weight_bytes`` of weights: from MAPPED_FROM_WEIGHT_BYTES
    on, give every later allocation of OWN_MAPPING_FROM_BYTES or more its own memory mapping, so
    freeing it hands the memory back at once (glibc; unless MALLOC_MMAP_THRESHOLD_ says otherwise).

    glibc's default threshold rises towards 32 MB as large blocks are freed; a float32 forward's
    activations below it then come from the heap, which keeps what they free, fragmented. The
    SDXL UNet's trace peaked at 20.8 GB with the default and at 14.4 GB with this (bench); each
    mapped block costs page faults when it is first written, hence the size gate."""
    if model_weight_bytes < MAPPED_FROM_WEIGHT_BYTES or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, OWN_MAPPING_FROM_BYTES)


@functools.cache
def _glibc(name: str):
    library = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(library), name, None) if library else None  # None outside glibc


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
