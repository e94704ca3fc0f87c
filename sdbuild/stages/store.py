"""Store stage: assemble a build in a staging folder and publish it atomically.

A build is written next to its final place, in `.<build-id>.partial-<host>-<pid>/build`, and
renamed into place only when complete, so an interrupted or failed build never leaves a folder
that looks finished. Temporary files of the build (coremltools saves a full copy of every
converted package in the temp folder) go to `.../tmp` beside it, so they are removed with it;
staging left by a killed process is removed by the next build into the same folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path

from sdbuild.folders import disk_full_error, make_folder, owner_died, owner_tag
from sdbuild.interrupts import interruptible, raise_if_interrupted
from sdbuild.manifest import BUILD_INFO_FILE
from sdbuild.package_io import replace_path

PARTIAL = ".partial-"


@contextmanager
def staging_folder(final: Path):
    """Yields an empty folder to assemble the build of ``final`` in; removed unless published.

    While it is open, temporary files go beside it, SIGTERM unwinds like Ctrl-C, and a full disk
    is one clear error.
    """
    parent = make_folder(final.parent, "output.dir")
    remove_abandoned_staging(parent)
    holder = parent / f".{final.name}{PARTIAL}{owner_tag()}"
    shutil.rmtree(holder, ignore_errors=True)
    (holder / "tmp").mkdir(parents=True)
    (holder / "build").mkdir()
    previous_tempdir, tempfile.tempdir = tempfile.tempdir, str(holder / "tmp")
    try:
        with interruptible():
            yield holder / "build"
    except Exception as error:
        # Frames of the failed stage may hold temp files; drop them while their folder exists.
        traceback.clear_frames(error.__traceback__)
        full = disk_full_error(error, final)
        if full is None:
            raise
        raise full from error
    finally:
        tempfile.tempdir = previous_tempdir
        shutil.rmtree(holder, ignore_errors=True)


def remove_abandoned_staging(folder: Path) -> list[Path]:
    """Delete the staging folders in ``folder`` whose process died on this host; returns them."""
    abandoned = [p for p in folder.glob(f".*{PARTIAL}*") if owner_died(p.name.rpartition(PARTIAL)[2])]
    for path in abandoned:
        shutil.rmtree(path, ignore_errors=True)
    return abandoned


def publish(staging: Path, final: Path) -> None:
    """Move the complete staging folder to ``final``, replacing an older build of the same id."""
    raise_if_interrupted()
    replace_path(staging, final)


def write_build_info(folder: Path, info: dict) -> None:
    """What varies between runs (host, clock, timings): kept out of the manifest and artifacts."""
    (folder / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
