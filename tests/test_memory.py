import gc
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from sdbuild.memory import SAMPLE_SECONDS, PeakMemory, resident_bytes, return_freed_memory


def test_a_window_sees_memory_taken_and_freed_inside_it_and_overlapping_windows_keep_their_own_peaks():
    peaks = PeakMemory()
    with peaks.window() as outer:
        with peaks.window() as inner:
            block = np.ones(300_000_000 // 8)  # 300 MB, touched, then freed before the window closes
            time.sleep(4 * SAMPLE_SECONDS)
            del block
        with peaks.window() as later, peaks.window():  # two windows alike: each closes its own
            pass
    assert inner.peak_bytes - resident_bytes() > 250e6
    assert outer.peak_bytes >= inner.peak_bytes
    assert later.peak_bytes < inner.peak_bytes - 250e6


def test_memory_held_by_an_unreachable_reference_cycle_goes_back_to_the_system():
    class Node:
        pass

    gc.disable()  # as between two automatic collections: only an explicit one frees the cycle
    try:
        node = Node()
        node.itself, node.data = node, np.ones(200_000_000 // 8)
        with_cycle = resident_bytes()
        del node
        return_freed_memory(when_above=0)  # a test process is smaller than a real build
        assert resident_bytes() < with_cycle - 150e6
    finally:
        gc.enable()


# In a fresh process: a 30 MB block freed first raises glibc's default mmap threshold to 30 MB,
# so the 2 MB blocks after it come from the heap, under a small block that pins its top.
_FRAGMENTING_CHILD = """
import sys
import numpy as np
from sdbuild.memory import map_large_allocations, resident_bytes
map_large_allocations(float(sys.argv[1]))  # bytes of weights of the model about to run
big = np.ones(30 << 20, np.uint8)
del big
blocks = [np.ones(2 << 20, np.uint8) for _ in range(200)]
pin = bytearray(64 << 10)
held = resident_bytes()
del blocks
print(held - resident_bytes())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_before_a_large_model_runs_large_blocks_get_their_own_mapping_and_go_back_to_the_system_when_freed():
    def returned_bytes(model_weight_bytes: float) -> int:
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
        run = subprocess.run([sys.executable, "-c", _FRAGMENTING_CHILD, str(model_weight_bytes)],
                             capture_output=True, text=True, check=True, env=env)
        return int(run.stdout.split()[-1])

    assert returned_bytes(3.5e9) < 100e6  # an SD 2.1 UNet's size: the heap keeps what it freed
    assert returned_bytes(10.3e9) > 380e6  # an SDXL UNet's: of the 420 MB freed
