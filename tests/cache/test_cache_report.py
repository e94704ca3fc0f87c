"""The tables behind `sdbuild cache list` and `sdbuild cache prune`."""

from __future__ import annotations

from pathlib import Path

from sdbuild.cache import CacheEntry
from sdbuild.cache.report import format_entries, format_pruned

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
CONVERT_KEY = "convert-" + "ab" * 32
VERIFY_KEY = "verify-" + "cd" * 32


def _entries() -> list[CacheEntry]:
    return [
        CacheEntry(key=CONVERT_KEY, stage="convert", bytes=1_234_567_890, created=NOW - 2 * 86400,
                   last_used=NOW - 3 * 3600, path=Path("x"), meta={}),
        CacheEntry(key=VERIFY_KEY, stage="verify", bytes=2_500, created=NOW - 60,
                   last_used=NOW - 5, path=Path("y"), meta={}),
    ]


def test_entries_table_lists_most_recent_first_with_sizes_and_ages():
    lines = format_entries(_entries(), now=NOW).splitlines()
    assert lines[0].split() == ["key", "stage", "MB", "created", "(UTC)", "last", "used"]
    assert lines[2].split() == ["verify-cdcdcdcdcdcd", "verify", "0.0", "2023-11-14", "22:12", "just", "now"]
    assert lines[3].split() == ["convert-abababababab", "convert", "1234.6", "2023-11-12", "22:13", "3", "h", "ago"]
    assert lines[-1] == "total 2 entries, 1234.6 MB"


def test_empty_cache_and_empty_prune_say_so():
    assert format_entries([]) == "the cache is empty"
    assert format_pruned([]) == "nothing to prune"


def test_prune_report_counts_what_was_freed():
    text = format_pruned(_entries()[:1], now=NOW)
    assert "convert-abababababab" in text
    assert text.splitlines()[-1] == "removed 1 entry, 1234.6 MB"
