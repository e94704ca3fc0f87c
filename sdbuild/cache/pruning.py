"""Which cache entries a prune removes: pure selection, so the policy is testable without a store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sdbuild.errors import SdbuildError

if TYPE_CHECKING:
    from sdbuild.cache.store import CacheEntry


def select_for_pruning(entries: Sequence["CacheEntry"], *, now: float, older_than_s: float | None,
                       max_bytes: int | None) -> list["CacheEntry"]:
    """Entries unused for more than ``older_than_s`` seconds, then least-recently-used eviction of
    the rest: the most recently used entries are kept while they fit in ``max_bytes``, and from
    the first one that does not fit, it and every older entry go. Least recently used first."""
    if older_than_s is not None and older_than_s < 0:
        raise SdbuildError(f"cannot prune entries older than {older_than_s} seconds", "give an age of 0 or more")
    if max_bytes is not None and max_bytes < 0:
        raise SdbuildError(f"cannot prune the cache to {max_bytes} bytes", "give a size budget of 0 or more")
    doomed = []
    kept_bytes = 0
    fits = True
    for entry in sorted(entries, key=lambda e: e.last_used, reverse=True):
        if older_than_s is not None and now - entry.last_used > older_than_s:
            doomed.append(entry)
            continue
        fits = fits and (max_bytes is None or kept_bytes + entry.bytes <= max_bytes)
        if fits:
            kept_bytes += entry.bytes
        else:
            doomed.append(entry)
    return doomed[::-1]
