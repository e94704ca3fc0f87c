"""The remote tier of the build cache: stage results shared between machines through fsspec.

Layout under the remote root (``s3://bucket/prefix``, ``file:///nfs/sdbuild-cache``, ...)::

    archives/<key>/<host>-<pid>-<random>.tar   one entry's data, uploaded under a name of its own
    index/<key>.json                           names the published archive, its sha256 and size,
                                               and the entry's record (data digest, meta)

An upload writes its archive under a fresh name, then publishes it with one put of the small index
object (a rename on a plain filesystem), so readers see no entry or a complete one; two machines
publishing the same key both succeed and the index names one of their archives. A download checks
the archive's sha256 and the extracted data's digest against the index before the entry enters the
local tier; anything else is reported in one line and rebuilt.

Credentials are never part of the configuration: s3fs/botocore read them from the environment
(AWS_ACCESS_KEY_ID, ...), a profile or an instance role, so nothing sdbuild writes can contain them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tarfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from sdbuild.errors import SdbuildError
from sdbuild.package_io import package_digest

_DATA = "data"  # the archive member holding the entry's data
_INDEX_FIELDS = {"key", "archive", "sha256", "bytes", "record"}
_CHUNK = 8 << 20
_ARCHIVE_MISSING = "its archive is missing"
# Option names that carry secrets in fsspec backends (s3fs key/secret/token, gcsfs token, adlfs
# account_key/sas_token, ...). The cache config is recorded in build-info.json, so they are refused.
_SECRET_OPTION = re.compile(r"^(key|secret|token|password)$|secret|password|token|access_key|account_key|"
                            r"credential|connection_string")
_CREDENTIALS_HINT = ("give credentials through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) "
                     "or a profile (AWS_PROFILE, cache.remote_options.profile)")


def check_remote_config(url: str, options: dict) -> None:
    """Refuse a remote whose configuration would put a credential in the build's records."""
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        raise SdbuildError(f"cache.remote={url!r} is not a URL",
                           "use s3://bucket/prefix, file:///shared/sdbuild-cache or another fsspec URL")
    if "@" in parts.netloc:
        raise SdbuildError("cache.remote contains credentials (user@ or user:password@)", _CREDENTIALS_HINT)
    for name in _option_names(options):
        if _SECRET_OPTION.search(name.lower()):
            raise SdbuildError(f"cache.remote_options.{name} would write a credential into the build's records",
                               _CREDENTIALS_HINT)


def _option_names(options: dict, prefix: str = "") -> list[str]:
    names = []
    for name, value in options.items():
        names.append(f"{prefix}{name}")
        if isinstance(value, dict):
            names.extend(_option_names(value, f"{prefix}{name}."))
    return names


class RemoteStore:
    """Reads and publishes cache entries under one fsspec URL; opening it checks the remote answers."""

    def __init__(self, url: str, options: dict | None = None):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        options = dict(options or {})
        check_remote_config(url, options)
        self.url = url
        try:
            self._fs, root = fsspec.core.url_to_fs(url, **options)
        except ImportError as error:  # e.g. s3fs missing for s3://
            raise SdbuildError(f"cache.remote={url} needs a package that is not installed ({error})",
                               "run `make venv`, or pip install the fsspec backend it names") from None
        except (ValueError, TypeError) as error:
            raise SdbuildError(f"cache.remote={url} cannot be opened: {_one_line(error)}",
                               "check the URL's protocol and cache.remote_options") from None
        self._root = root.rstrip("/")
        self._local = isinstance(self._fs, LocalFileSystem)
        self._token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._damaged: dict[str, str | None] = {}  # key -> the archive a damaged index named
        self._failed = False
        self._check_reachable()

    def download(self, key: str, data: Path) -> dict | None:
        """Fetch the data of entry ``key`` to ``data`` (a path in a scratch folder, not yet there)
        and return its record, or None when the remote has no sound entry (a damaged one is
        reported, and replaced by the next upload)."""
        if self._failed:
            return None
        try:
            index, problem = self._fetch(key, data)
        except Exception as error:  # noqa: BLE001 - the remote is an accelerator: a failure must not lose the build
            self._give_up("read", error)
            return None
        if problem is None:
            return index and index["record"]
        self._damaged[key] = index and index["archive"]
        _warn(f"remote cache entry {key} in {self.url} is corrupt ({problem}); rebuilding it")
        return None

    def _fetch(self, key: str, data: Path) -> tuple[dict | None, str | None]:
        """The remote's index of ``key`` (None: absent or unreadable) and what is wrong with the
        entry (None: its data is at ``data``, checked)."""
        try:
            index = self._read_index(key)
            if index is None:
                return None, None
            problem = self._fetch_archive(index, data)
            if problem == _ARCHIVE_MISSING and (newer := self._read_index(key)) not in (None, index):
                # A concurrent publisher replaced the entry between our two reads: take the new one.
                index, problem = newer, self._fetch_archive(newer, data)
            return index, problem
        except _IndexDamaged as damaged:
            return None, str(damaged)

    def upload(self, key: str, data: Path, record: dict, workdir: Path) -> None:
        """Publish a local entry (its data and record), unless another machine already did; a
        damaged remote entry is replaced. ``workdir`` is an empty scratch folder."""
        if self._failed:
            return
        try:
            self._upload(key, data, record, workdir)
        except Exception as error:  # noqa: BLE001 - the local entry is complete; sharing it is best effort
            self._give_up("write", error)

    def _upload(self, key: str, data: Path, record: dict, workdir: Path) -> None:
        replacing = key in self._damaged
        damaged_archive = self._damaged.pop(key, None)
        index_path = self._index_path(key)
        if not replacing and self._fs.exists(index_path):
            return  # another machine built and published it while we did
        archive_file = workdir / "entry.tar"
        with tarfile.open(archive_file, "w") as tar:
            tar.add(data, arcname=_DATA, filter=_anonymous)
        archive = f"archives/{key}/{self._token}.tar"
        self._write_parents(f"{self._root}/{archive}")
        self._fs.put_file(str(archive_file), f"{self._root}/{archive}")
        index = {"key": key, "archive": archive, "sha256": package_digest(archive_file),
                 "bytes": archive_file.stat().st_size, "record": record}
        self._publish(index_path, json.dumps(index, indent=2, sort_keys=True).encode() + b"\n")
        # Whichever publisher wrote last won; the other archives are named by no index.
        published = self._read_index(key)
        named = published["archive"] if published else None
        for orphan in {archive, damaged_archive} - {named, None}:
            try:
                self._fs.rm_file(f"{self._root}/{orphan}")
            except FileNotFoundError:
                pass  # a damaged entry's archive may be the part that went missing

    def _check_reachable(self) -> None:
        """Fail before any work when the remote cannot be read (unreachable, credentials, no bucket)."""
        try:
            if self._local:
                self._fs.makedirs(f"{self._root}/index", exist_ok=True)
            else:  # one cheap request that needs the endpoint, the credentials and the bucket
                self._fs.info(_bucket(self._root))
        except Exception as error:  # noqa: BLE001 - backends raise their own types; all mean "unusable"
            problem = f"bucket {_bucket(self._root)} not found" if isinstance(error, FileNotFoundError) else _one_line(error)
            raise SdbuildError(f"remote cache {self.url} is unusable: {problem}",
                               "check the URL, the endpoint and the credentials (environment or AWS profile), "
                               "or drop cache.remote to build with the local cache only") from None

    def _read_index(self, key: str) -> dict | None:
        try:
            raw = self._fs.cat_file(self._index_path(key))
        except FileNotFoundError:
            return None
        try:
            index = json.loads(raw)
        except ValueError:
            raise _IndexDamaged("its index is not JSON") from None
        if not isinstance(index, dict) or not _INDEX_FIELDS <= index.keys() or index["key"] != key:
            raise _IndexDamaged("its index is incomplete")
        if not isinstance(index["record"], dict) or "digest" not in index["record"]:
            raise _IndexDamaged("its index has no data digest")
        return index

    def _fetch_archive(self, index: dict, data: Path) -> str | None:
        """Download, check and unpack the archive an index names to ``data``; what is wrong, or None."""
        archive = data.parent / f"{data.name}.tar"
        unpacked = data.parent / f"{data.name}.unpacked"
        try:
            problem = self._download_checked(index, archive)
            if problem is not None:
                return problem
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(unpacked, filter="data")
            except (tarfile.TarError, OSError) as error:
                return f"its archive does not unpack: {_one_line(error)}"
            if not (unpacked / _DATA).exists():
                return "its archive holds no data"
            if package_digest(unpacked / _DATA) != index["record"]["digest"]:
                return "its data differs from the recorded digest"
            os.replace(unpacked / _DATA, data)
            return None
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(unpacked, ignore_errors=True)

    def _download_checked(self, index: dict, archive: Path) -> str | None:
        """Copy the archive to ``archive``, hashing it on the way; what is wrong, or None."""
        digest = hashlib.sha256()
        try:
            with self._fs.open(f"{self._root}/{index['archive']}", "rb") as src, open(archive, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
        except FileNotFoundError:
            return _ARCHIVE_MISSING
        size = archive.stat().st_size
        if size != index["bytes"]:
            return f"its archive has {size} bytes, the index says {index['bytes']}"
        if digest.hexdigest() != index["sha256"]:
            return f"its archive's sha256 {digest.hexdigest()[:12]}... differs from the index's {index['sha256'][:12]}..."
        return None

    def _publish(self, path: str, content: bytes) -> None:
        """One atomic write: an object store's put, or a rename on a plain filesystem."""
        if self._local:
            partial = f"{path}.{self._token}.partial"
            self._fs.pipe_file(partial, content)
            self._fs.mv(partial, path)
        else:
            self._fs.pipe_file(path, content)

    def _write_parents(self, path: str) -> None:
        if self._local:  # object stores have no folders to create
            self._fs.makedirs(self._fs._parent(path), exist_ok=True)

    def _index_path(self, key: str) -> str:
        return f"{self._root}/index/{key}.json"

    def _give_up(self, action: str, error: Exception) -> None:
        """Report a failing remote once, then build with the local cache only."""
        self._failed = True
        _warn(f"cannot {action} the remote cache {self.url} ({_one_line(error)}); "
              "continuing with the local cache only")


def _anonymous(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Shared archives do not name the user who built them."""
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


class _IndexDamaged(Exception):
    """A remote index object that cannot be trusted."""


def _bucket(root: str) -> str:
    return root.split("/", 1)[0]


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
