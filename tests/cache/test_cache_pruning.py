"""The prune policy on its own: by age, then least recently used beyond a size budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbuild.cache import CacheEntry
from sdbuild.cache.pruning import select_for_pruning
from sdbuild.errors import SdbuildError

NOW = 1_000_000.0


def _entry(name: str, size: int, idle_s: float) -> CacheEntry:
    return CacheEntry(key=name, stage="convert", bytes=size, created=0.0, last_used=NOW - idle_s,
                      path=Path(name), meta={})


def _names(entries) -> list[str]:
    return [e.key for e in entries]


ENTRIES = [_entry("a", 500, 10), _entry("b", 300, 20), _entry("c", 100, 30), _entry("d", 50, 40)]


def test_no_limits_select_nothing():
    assert select_for_pruning(ENTRIES, now=NOW, older_than_s=None, max_bytes=None) == []


def test_age_limit_selects_entries_idle_longer():
    assert _names(select_for_pruning(ENTRIES, now=NOW, older_than_s=25, max_bytes=None)) == ["d", "c"]


@pytest.mark.parametrize("budget, doomed", [
    (950, []),
    (949, ["d"]),
    (900, ["d"]),
    (850, ["d", "c"]),
    (750, ["d", "c", "b"]),  # c and d would fit beside a, but b, newer than both, did not: strict LRU
    (0, ["d", "c", "b", "a"]),
])
def test_size_budget_evicts_least_recently_used(budget, doomed):
    assert _names(select_for_pruning(ENTRIES, now=NOW, older_than_s=None, max_bytes=budget)) == doomed


def test_size_budget_ignores_entries_already_too_old():
    # d and c go for age; b and a (800 bytes) then fit a budget of 800.
    assert _names(select_for_pruning(ENTRIES, now=NOW, older_than_s=25, max_bytes=800)) == ["d", "c"]


def test_negative_limits_are_clear_errors():
    with pytest.raises(SdbuildError, match="older than -1"):
        select_for_pruning(ENTRIES, now=NOW, older_than_s=-1, max_bytes=None)
    with pytest.raises(SdbuildError, match="-5 bytes"):
        select_for_pruning(ENTRIES, now=NOW, older_than_s=None, max_bytes=-5)
