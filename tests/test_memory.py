import gc
import time

import numpy as np

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
