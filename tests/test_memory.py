import time

import numpy as np

from sdbuild.memory import SAMPLE_SECONDS, PeakMemory, resident_bytes


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
