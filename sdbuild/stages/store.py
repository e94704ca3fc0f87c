"""Store stage: assemble a build in a staging folder and publish it atomically.

A build is written next to its final place (`.<build-id>.partial-<pid>`) and renamed into place
only when complete, so an interrupted or failed build never leaves a folder that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from sdbuild.manifest import BUILD_INFO_FILE
from sdbuild.package_io import replace_path


@contextmanager
def staging_folder(final: Path):
    """Yields an empty staging folder beside ``final``; removed unless published."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, final: Path) -> None:
    """Move the complete staging folder to ``final``, replacing an older build of the same id."""
    replace_path(staging, final)


def write_build_info(folder: Path, info: dict) -> None:
    """What varies between runs (host, clock, timings): kept out of the manifest and artifacts."""
    (folder / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
