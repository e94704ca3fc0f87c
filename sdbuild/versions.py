"""Versions of the tools that shape a build: part of every build id, cache key and manifest."""

import functools
import platform
from importlib import metadata

import sdbuild

TRACKED_PACKAGES = ("torch", "coremltools", "diffusers", "transformers", "numpy")


@functools.cache
def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "sdbuild": sdbuild.__version__}
    versions.update({name: metadata.version(name) for name in TRACKED_PACKAGES})
    return versions
