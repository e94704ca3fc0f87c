"""Where the build cache lives unless a recipe (`cache.dir`) or a command (`--cache-dir`) says."""

from __future__ import annotations

from pathlib import Path


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("sdbuild"))
