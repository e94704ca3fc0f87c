"""A content-addressed store of stage results, safe to share between concurrent builders.

Layout under the root::

    entries/<key>/data          the result: a file or a folder, its files read-only
    entries/<key>/record.json   digest, size, creation time and the caller's meta
    entries/<key>/used          its mtime is the entry's last use
    locks/<key>.lock            one file lock per key
    staging/<host>-<pid>-<n>/   entries being built, and entries being deleted

An entry appears by renaming a complete staging folder into ``entries/``, so readers never see a
half-written one; every ``get`` re-hashes the data, so an entry damaged afterwards (a write
through a hard link, a truncated file) is reported and evicted instead of used.

With a ``remote`` (sdbuild.cache.remote), ``get_or_create`` looks locally, then remotely (the
entry is downloaded, hash-checked and committed locally), and only then builds and uploads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from sdbuild.cache.pruning import select_for_pruning
from sdbuild.cache.remote import RemoteStore
from sdbuild.errors import SdbuildError
from sdbuild.folders import make_folder, owner_died, owner_tag
from sdbuild.package_io import file_size, package_digest, replace_path, staging_path

DATA = "data"
RECORD = "record.json"
USED = "used"
_KEY_PATTERN = re.compile(r"^(?P<stage>[a-z0-9][a-z0-9_]*)-[0-9a-f]{64}$")
_STAGE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class CorruptEntryWarning(UserWarning):
    """A cache entry no longer matches the digest recorded when it was stored; it was evicted."""


@dataclass(frozen=True)
class CacheEntry:
    key: str
    stage: str
    bytes: int
    created: float  # Unix time
    last_used: float  # Unix time
    path: Path  # the stored result (file or folder)
    meta: dict


class BuildCache:
    def __init__(self, root: Path, remote: RemoteStore | None = None):
        self.root = Path(root).expanduser()
        self.remote = remote
        self._entries = self.root / "entries"
        self._locks_dir = self.root / "locks"
        self._staging = self.root / "staging"
        make_folder(self.root, "cache.dir")
        for folder in (self._entries, self._locks_dir, self._staging):
            folder.mkdir(exist_ok=True)
        self._locks: dict[str, FileLock] = {}

    @staticmethod
    def key(stage: str, parts: dict) -> str:
        """``<stage>-<sha256 of the canonical JSON of {stage, parts}>``.

        The stage prefix keeps listings and folder names readable; the hash alone decides identity.
        """
        if not _STAGE_PATTERN.match(stage):
            raise ValueError(f"invalid cache stage name {stage!r}: use lowercase letters, digits and '_'")
        try:
            canonical = json.dumps({"stage": stage, "parts": parts}, sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise TypeError(f"cache key parts of stage '{stage}' must be plain JSON data: {error}") from None
        return f"{stage}-{hashlib.sha256(canonical.encode()).hexdigest()}"

    def get(self, key: str) -> Path | None:
        """The stored result, or None when absent; a damaged entry is warned about and evicted."""
        entry_dir = self._entry_dir(key)
        if not entry_dir.exists():
            return None
        problem = _damage(entry_dir)
        if problem is None:
            try:
                (entry_dir / USED).touch()
            except OSError:
                pass  # a read-only shared cache still serves hits; only its LRU order goes stale
            return entry_dir / DATA
        warnings.warn(f"build cache entry {key} at {entry_dir} is corrupt ({problem}); evicting it",
                      CorruptEntryWarning, stacklevel=2)
        with self.locked(key):
            # Another builder may have replaced it with a sound entry since we looked.
            if entry_dir.exists() and _damage(entry_dir) is not None:
                self._remove(entry_dir)
        return None

    def put(self, key: str, src: Path, meta: dict) -> Path:
        """Copy ``src`` (file or folder) in as the entry for ``key``, replacing any old one."""
        src = Path(src)
        if not src.exists():
            raise SdbuildError(f"cannot cache '{src}': it does not exist", "check the path of the stage result")
        with self.locked(key), self._staging_dir() as staging:
            if src.is_dir():
                shutil.copytree(src, staging / DATA)
            else:
                shutil.copy2(src, staging / DATA)
            return self._commit(key, staging, meta)

    @contextmanager
    def locked(self, key: str, timeout: float = -1) -> Iterator[None]:
        """Hold the lock of ``key`` (re-entrant within a thread); ``timeout`` < 0 waits forever."""
        self._entry_dir(key)  # validates the key before it names a file
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks.setdefault(key, FileLock(self._locks_dir / f"{key}.lock"))
        with lock.acquire(timeout=timeout):
            yield

    def get_or_create(self, key: str, create: Callable[[Path], dict]) -> tuple[Path, bool]:
        """The entry for ``key`` and whether it was a hit (local or remote); on a miss
        ``create(folder)`` writes the result into an empty folder and returns its meta, and the
        entry is uploaded to the remote. The key's lock is held throughout, so concurrent builders
        on this machine create each entry once."""
        with self.locked(key):
            hit = self.get(key) or self._download(key)
            if hit is not None:
                return hit, True
            with self._staging_dir() as staging:
                (staging / DATA).mkdir()
                meta = create(staging / DATA)
                entry = self._commit(key, staging, meta)
            if self.remote is not None:
                with self._staging_dir() as workdir:
                    self.remote.upload(key, entry, _read_record(entry.parent), workdir)
            return entry, False

    def _download(self, key: str) -> Path | None:
        """The remote's entry for ``key``, committed to this cache once its hashes check out."""
        if self.remote is None:
            return None
        with self._staging_dir() as staging:
            record = self.remote.download(key, staging / DATA)
            if record is None:
                return None
            return self._commit(key, staging, record["meta"], digest=record["digest"])

    def materialize(self, entry: Path, dest: Path) -> None:
        """Place a stored result at ``dest``: hard links on the same filesystem, else copies.

        Stored files are read-only, so the links are too; ``dest`` is replaced atomically.
        """
        entry, dest = Path(entry), Path(dest)
        with staging_path(dest) as staged:
            if entry.is_dir():
                shutil.copytree(entry, staged, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry, staged)
            replace_path(staged, dest)

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, most recently used first."""
        found = [entry for d in self._entries.iterdir() if (entry := _read_entry(d)) is not None]
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def prune(self, *, older_than_s: float | None = None, max_bytes: int | None = None) -> list[CacheEntry]:
        """Remove entries unused for ``older_than_s`` seconds, then the least recently used ones
        until the rest fit in ``max_bytes``; entries locked by a running build are skipped.
        Also clears staging folders left by builders that died on this host. Returns what was removed."""
        removed = []
        for entry in select_for_pruning(self.entries(), now=time.time(), older_than_s=older_than_s,
                                        max_bytes=max_bytes):
            try:
                with self.locked(entry.key, timeout=0):
                    self._remove(self._entry_dir(entry.key))
            except Timeout:
                continue
            removed.append(entry)
        self.remove_abandoned_staging()
        return removed

    def remove_abandoned_staging(self) -> None:
        """Delete staging folders (`<host>-<pid>-<n>`) of processes on this host that no longer run."""
        for folder in self._staging.iterdir():
            if owner_died(folder.name.rpartition("-")[0]):
                shutil.rmtree(folder, ignore_errors=True)

    def _entry_dir(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise SdbuildError(f"invalid cache key {key!r}", "cache keys come from BuildCache.key(stage, parts)")
        return self._entries / key

    @contextmanager
    def _staging_dir(self) -> Iterator[Path]:
        """A private folder under staging/, named so that prune can tell when its builder died."""
        folder = Path(tempfile.mkdtemp(dir=self._staging, prefix=f"{owner_tag()}-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _commit(self, key: str, staging: Path, meta: dict, digest: str | None = None) -> Path:
        """Seal the result in ``staging`` and rename it into place as the entry for ``key``;
        ``digest`` is the data's, when the caller has just checked it."""
        if not isinstance(meta, dict):
            raise TypeError(f"meta of cache entry {key} must be a dict, not {type(meta).__name__}")
        data = staging / DATA
        record = {
            "key": key,
            "stage": _KEY_PATTERN.match(key)["stage"],
            "digest": digest or package_digest(data),
            "bytes": file_size(data),
            "created": time.time(),
            "meta": meta,
        }
        try:
            (staging / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        except (TypeError, ValueError) as error:
            raise TypeError(f"meta of cache entry {key} must be plain JSON data: {error}") from None
        (staging / USED).touch()
        _make_read_only(data)
        entry_dir = self._entry_dir(key)
        if entry_dir.exists():
            self._remove(entry_dir)
        os.replace(staging, entry_dir)
        return entry_dir / DATA

    def _remove(self, entry_dir: Path) -> None:
        """Rename the entry out of entries/ first, so no reader ever sees it half deleted."""
        with self._staging_dir() as trash:
            try:
                os.replace(entry_dir, trash / entry_dir.name)
            except FileNotFoundError:
                pass  # already gone


def _damage(entry_dir: Path) -> str | None:
    """What is wrong with a stored entry, or None when its data still hashes to its record."""
    record = _read_record(entry_dir)
    if record is None:
        return "its record is missing or unreadable"
    data = entry_dir / DATA
    if not data.exists():
        return "its data is missing"
    actual = package_digest(data)
    if actual != record["digest"]:
        return f"content sha256 {actual[:12]}... differs from the recorded {record['digest'][:12]}..."
    return None


def _read_record(entry_dir: Path) -> dict | None:
    try:
        record = json.loads((entry_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    required = {"key", "stage", "digest", "bytes", "created", "meta"}
    return record if isinstance(record, dict) and required <= record.keys() else None


def _read_entry(entry_dir: Path) -> CacheEntry | None:
    record = _read_record(entry_dir)
    if record is None:
        return None
    try:
        last_used = (entry_dir / USED).stat().st_mtime
    except FileNotFoundError:
        last_used = record["created"]
    return CacheEntry(key=record["key"], stage=record["stage"], bytes=record["bytes"], created=record["created"],
                      last_used=last_used, path=entry_dir / DATA, meta=record["meta"])


def _make_read_only(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        file.chmod(file.stat().st_mode & ~0o222)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem (EXDEV), or one without hard links
        shutil.copy2(src, dst)
