"""Folders sdbuild writes to: made with one clear error when a file is in the way or the disk is
full, and staging tagged `<host>-<pid>` so that the next build or `sdbuild cache prune` can remove
what a killed process left, never a live process's work (nor another host's, on a shared
filesystem)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

from sdbuild.errors import SdbuildError

_NEARLY_FULL_BYTES = 1 << 20  # less free space than this, after a failed write, means the disk is full


def check_folder(path: Path, setting: str) -> None:
    """Refuse a folder that cannot be made because a file is in the way (``setting`` chose it)."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise SdbuildError(f"{setting} {path} cannot be a folder: {blocker} is a file",
                           f"point {setting} at a folder, or move that file away")


def make_folder(path: Path, setting: str) -> Path:
    """Create ``path`` (and parents); ``setting`` names the recipe key or option that chose it."""
    check_folder(path, setting)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SdbuildError(f"cannot create {setting} {path}: {error.strerror}",
                           f"point {setting} at a folder you can write to") from error
    return path


def disk_full_error(error: BaseException, building: Path) -> SdbuildError | None:
    """The one-line error for a full disk (or quota) while ``building``; None for other errors.

    Besides OSError's errno, the system's message is looked for: shutil's copy errors carry it
    only as text. coremltools' C++ package writer reports a full disk as a generic filesystem
    error (even EIO), so for those the free space of the build's disk decides.
    """
    full = (errno.ENOSPC, errno.EDQUOT)
    said = getattr(error, "errno", None) in full or any(os.strerror(code) in str(error) for code in full)
    filesystem_error = isinstance(error, OSError) or "filesystem error" in str(error)
    if not (said or (filesystem_error and _free_bytes(building) < _NEARLY_FULL_BYTES)):
        return None
    where = getattr(error, "filename", None) or building
    return SdbuildError(f"no space left on device while writing {where}; nothing was published",
                        "free some space there, or set output.dir / cache.dir to a disk with room")


def _free_bytes(path: Path) -> int:
    existing = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(existing).free


def owner_tag() -> str:
    """`<host>-<pid>` of this process."""
    return f"{socket.gethostname()}-{os.getpid()}"


def owner_died(tag: str) -> bool:
    """Whether ``tag`` (`<host>-<pid>`) names a process of this host that no longer runs."""
    host, _, pid = tag.rpartition("-")
    return host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
