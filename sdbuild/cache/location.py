"""Where the cache lives when a recipe does not say (cache.dir)."""

from __future__ import annotations

from pathlib import Path


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("sdbuild"))
