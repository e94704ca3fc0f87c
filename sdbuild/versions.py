"""Versions of the tools that shape a build: part of every build id, cache key and manifest."""

import functools
import hashlib
import platform
from importlib import metadata
from pathlib import Path

import sdbuild

TRACKED_PACKAGES = ("torch", "coremltools", "diffusers", "transformers", "numpy")


@functools.cache
def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "sdbuild": sdbuild.__version__,
                "sdbuild_source": sdbuild_source_digest()}
    versions.update({name: metadata.version(name) for name in TRACKED_PACKAGES})
    return versions


def sdbuild_source_digest() -> str:
    """Digest of sdbuild's own code. The version number alone misses edits between releases, and
    an edited stage must never be served a cache entry its old code made."""
    package = Path(sdbuild.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
