"""Content digests: sha256 of canonical JSON, and of files (memoised within a process)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 8 << 20

# (resolved path, size, mtime_ns) -> sha256: weights are hashed once per process even when a
# build resolves the same multi-GB source many times.
_file_hashes: dict[tuple[str, int, int], str] = {}


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def json_digest(value: object) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes.

    A Hugging Face cache snapshot file is a symlink to ``blobs/<name>``, and large (LFS) blobs
    are named by the sha256 of their content, so those need no reading at all.
    """
    real = path.resolve()
    if path.is_symlink() and real.parent.name == "blobs" and _SHA256_NAME.fullmatch(real.name):
        return real.name
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        sha = hashlib.sha256()
        with open(real, "rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                sha.update(chunk)
        _file_hashes[key] = sha.hexdigest()
    return _file_hashes[key]


def files_digest(root: Path, files: Iterable[Path]) -> str:
    """sha256 over the sorted (path relative to ``root``, file sha256) pairs."""
    entries = sorted([path.relative_to(root).as_posix(), file_sha256(path)] for path in files)
    return json_digest(entries)
