"""Readable tables of cache entries, for `sdbuild cache list` and `sdbuild cache prune`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone

from sdbuild.cache.store import CacheEntry
from sdbuild.progress import format_table

_HEADERS = ["key", "stage", "MB", "created (UTC)", "last used"]
_KEY_SHOWN = 12  # hex digits of the hash shown; enough to tell entries apart by eye


def format_entries(entries: Sequence[CacheEntry], *, now: float | None = None) -> str:
    """One row per entry, most recently used first, and a total line."""
    if not entries:
        return "the cache is empty"
    return f"{_table(entries, now)}\n{_total('total', entries)}"


def format_pruned(pruned: Sequence[CacheEntry], *, now: float | None = None) -> str:
    """What a prune removed, and the space it freed."""
    if not pruned:
        return "nothing to prune"
    return f"{_table(pruned, now)}\n{_total('removed', pruned)}"


def _table(entries: Sequence[CacheEntry], now: float | None) -> str:
    now = time.time() if now is None else now
    rows = [
        [_short_key(e.key), e.stage, f"{e.bytes / 1e6:.1f}", _utc(e.created), _age(now - e.last_used)]
        for e in sorted(entries, key=lambda e: e.last_used, reverse=True)
    ]
    return format_table(_HEADERS, rows)


def _total(verb: str, entries: Sequence[CacheEntry]) -> str:
    count = len(entries)
    return f"{verb} {count} entr{'y' if count == 1 else 'ies'}, {sum(e.bytes for e in entries) / 1e6:.1f} MB"


def _short_key(key: str) -> str:
    stage, _, digest = key.rpartition("-")
    return f"{stage}-{digest[:_KEY_SHOWN]}"


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"
