"""Silence third-party chatter that means nothing to sdbuild users; real warnings stay visible."""

from __future__ import annotations

import functools
import logging
import os
import warnings

# Messages we know are noise on every run: unsupported-version notices for versions we pin and
# test, and macOS-only runtime proxies that are absent on Linux by design.
_NOISE = (
    r"Torch version .* has not been tested with coremltools",
    r"scikit-learn version .* is not supported",
    r"Failed to load _ML",
)


def silence_progress_bars() -> None:
    """coremltools draws a tqdm bar per MIL pass; sdbuild prints its own per-stage progress.

    tqdm reads TQDM_DISABLE when it is imported, so entry points call this before heavy imports.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")


@functools.cache
def import_coremltools():
    """Import coremltools with its import-time noise silenced and its faster graph passes
    installed (`sdbuild.fast_passes`: same packages, less time); returns the module."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    # A graph pass folds float32 constants to float16 and lets numpy warn about saturating ones
    # (the safety checker's -inf masks); only warnings raised from coremltools' own code.
    warnings.filterwarnings("ignore", message="overflow encountered in cast", module=r"coremltools\.")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct

    # coremltools logs each of its MIL passes at INFO with a progress bar; keep errors only.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    from sdbuild import fast_passes

    fast_passes.install()
    return ct
