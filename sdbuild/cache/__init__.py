"""Content-addressed cache of build stage results (see ``store`` for the layout and guarantees)."""

from sdbuild.cache.location import default_cache_dir
from sdbuild.cache.store import BuildCache, CacheEntry, CorruptEntryWarning

__all__ = ["BuildCache", "CacheEntry", "CorruptEntryWarning", "default_cache_dir"]
