"""BuildCache in one process: keys, hits and misses, corruption, materialize, listing, pruning."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from filelock import FileLock

from sdbuild.cache import BuildCache, CorruptEntryWarning
from sdbuild.cache import store as store_module
from sdbuild.errors import SdbuildError


@pytest.fixture
def cache(tmp_path) -> BuildCache:
    return BuildCache(tmp_path / "cache")


def _result_dir(root: Path, payload: bytes = b"weights" * 100) -> Path:
    root.mkdir(parents=True)
    (root / "model.mlpackage" / "Data").mkdir(parents=True)
    (root / "model.mlpackage" / "Data" / "weight.bin").write_bytes(payload)
    (root / "report.json").write_text('{"psnr": 40.5}')
    return root


def _writer(payload: bytes, calls: list):
    def create(folder: Path) -> dict:
        calls.append(folder)
        (folder / "out.bin").write_bytes(payload)
        return {"component": "unet"}

    return create


def test_key_is_canonical_and_names_the_stage():
    key = BuildCache.key("convert", {"b": [1, 2], "a": {"y": 1.5, "x": "s"}})
    assert key == BuildCache.key("convert", {"a": {"x": "s", "y": 1.5}, "b": [1, 2]})
    stage, _, digest = key.rpartition("-")
    assert stage == "convert"
    canonical = '{"parts":{"a":{"x":"s","y":1.5},"b":[1,2]},"stage":"convert"}'
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert key != BuildCache.key("convert", {"a": {"x": "s", "y": 1.5}, "b": [2, 1]})
    assert key != BuildCache.key("compress", {"a": {"x": "s", "y": 1.5}, "b": [1, 2]})


def test_key_rejects_non_json_parts_and_bad_stage_names():
    with pytest.raises(TypeError, match="plain JSON"):
        BuildCache.key("convert", {"source": Path("/models/sd")})
    with pytest.raises(TypeError, match="plain JSON"):
        BuildCache.key("convert", {"scale": float("nan")})
    with pytest.raises(ValueError, match="stage name"):
        BuildCache.key("../escape", {})


def test_invalid_keys_are_refused(cache):
    with pytest.raises(SdbuildError, match="invalid cache key"):
        cache.get("../../etc")


def test_miss_then_hit_after_put_of_a_folder(cache, tmp_path):
    key = BuildCache.key("convert", {"n": 1})
    assert cache.get(key) is None
    src = _result_dir(tmp_path / "result")

    stored = cache.put(key, src, {"component": "unet"})

    assert cache.get(key) == stored
    assert (stored / "report.json").read_text() == '{"psnr": 40.5}'
    assert (stored / "model.mlpackage" / "Data" / "weight.bin").read_bytes() == b"weights" * 100
    assert src.exists()  # put copies
    assert (stored / "report.json").stat().st_mode & 0o222 == 0


def test_put_of_a_plain_file(cache, tmp_path):
    src = tmp_path / "vocab.json"
    src.write_text("{}")
    key = BuildCache.key("tokenizer", {"id": "x"})
    stored = cache.put(key, src, {})
    assert stored.is_file() and stored.read_text() == "{}"
    assert cache.get(key) == stored


def test_get_or_create_creates_once_then_hits(cache):
    key = BuildCache.key("convert", {"n": 2})
    calls: list[Path] = []
    path, hit = cache.get_or_create(key, _writer(b"abc", calls))
    assert not hit and len(calls) == 1
    again, hit = cache.get_or_create(key, _writer(b"abc", calls))
    assert hit and again == path and len(calls) == 1
    assert (path / "out.bin").read_bytes() == b"abc"
    assert os.listdir(cache.root / "staging") == []


def test_failed_create_leaves_no_entry(cache):
    key = BuildCache.key("convert", {"n": 3})

    def failing(folder: Path) -> dict:
        (folder / "half.bin").write_bytes(b"partial")
        raise RuntimeError("conversion crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        cache.get_or_create(key, failing)
    assert cache.get(key) is None
    assert cache.entries() == []
    assert os.listdir(cache.root / "staging") == []


def test_create_must_return_a_dict(cache):
    with pytest.raises(TypeError, match="must be a dict"):
        cache.get_or_create(BuildCache.key("convert", {}), lambda folder: None)


def _flip_a_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.chmod(0o644)
    with open(path, "r+b") as stream:
        stream.truncate(5)


def _drop_record(entry_data: Path) -> None:
    (entry_data.parent / store_module.RECORD).unlink()


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate], ids=["flipped-byte", "truncated"])
def test_corrupt_entry_is_warned_evicted_and_rebuilt(cache, damage):
    key = BuildCache.key("convert", {"n": 4})
    calls: list[Path] = []
    path, _ = cache.get_or_create(key, _writer(b"0123456789" * 10, calls))
    damage(path / "out.bin")

    with pytest.warns(CorruptEntryWarning, match=key) as caught:
        rebuilt, hit = cache.get_or_create(key, _writer(b"0123456789" * 10, calls))

    assert "differs from the recorded" in str(caught[0].message)
    assert not hit and len(calls) == 2
    assert (rebuilt / "out.bin").read_bytes() == b"0123456789" * 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(key) == rebuilt


def test_entry_without_record_is_evicted(cache):
    key = BuildCache.key("convert", {"n": 5})
    path, _ = cache.get_or_create(key, _writer(b"x", []))
    _drop_record(path)
    with pytest.warns(CorruptEntryWarning, match="record is missing"):
        assert cache.get(key) is None
    assert not path.parent.exists()


def test_materialize_hard_links_read_only_files(cache, tmp_path):
    key = BuildCache.key("convert", {"n": 6})
    stored = cache.put(key, _result_dir(tmp_path / "result"), {})
    dest = tmp_path / "build" / "Unet.mlpackage"

    cache.materialize(stored / "model.mlpackage", dest)

    source_file, linked = stored / "model.mlpackage/Data/weight.bin", dest / "Data/weight.bin"
    assert linked.read_bytes() == source_file.read_bytes()
    assert linked.stat().st_ino == source_file.stat().st_ino
    assert linked.stat().st_nlink == 2
    assert linked.stat().st_mode & 0o222 == 0  # a writer gets EACCES instead of changing the store
    assert sorted(os.listdir(dest.parent)) == ["Unet.mlpackage"]


def test_materialize_replaces_existing_output(cache, tmp_path):
    stored = cache.put(BuildCache.key("convert", {"n": 7}), _result_dir(tmp_path / "result"), {})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    cache.materialize(stored, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["model.mlpackage", "report.json"]


def test_materialize_copies_across_filesystems(cache, tmp_path, monkeypatch):
    stored = cache.put(BuildCache.key("convert", {"n": 8}), _result_dir(tmp_path / "result"), {})

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(store_module.os, "link", cross_device)
    dest = tmp_path / "copy"
    cache.materialize(stored / "report.json", dest)
    assert dest.read_text() == '{"psnr": 40.5}'
    assert dest.stat().st_ino != (stored / "report.json").stat().st_ino


def test_entries_report_stage_size_and_last_use(cache, tmp_path):
    before = time.time()
    key = BuildCache.key("compress", {"n": 9})
    stored = cache.put(key, _result_dir(tmp_path / "result", b"w" * 1000), {"component": "unet"})
    used_marker = stored.parent / store_module.USED
    os.utime(used_marker, (before - 3600, before - 3600))

    (entry,) = cache.entries()
    assert (entry.key, entry.stage, entry.path, entry.meta) == (key, "compress", stored, {"component": "unet"})
    assert entry.bytes == 1000 + len('{"psnr": 40.5}')
    assert before <= entry.created <= time.time()
    assert entry.last_used == pytest.approx(before - 3600, abs=1)

    cache.get(key)
    assert cache.entries()[0].last_used >= before


def _stored_entry(cache: BuildCache, name: str, size: int, last_used: float) -> str:
    key = BuildCache.key("convert", {"name": name})
    path = cache.put(key, _one_file(cache.root.parent / f"src-{name}", size), {})
    os.utime(path.parent / store_module.USED, (last_used, last_used))
    return key


def _one_file(path: Path, size: int) -> Path:
    path.write_bytes(b"\0" * size)
    return path


def test_prune_by_age(cache):
    now = time.time()
    old = _stored_entry(cache, "old", 10, now - 10 * 86400)
    fresh = _stored_entry(cache, "fresh", 10, now - 60)

    removed = cache.prune(older_than_s=86400)

    assert [e.key for e in removed] == [old]
    assert [e.key for e in cache.entries()] == [fresh]
    assert cache.get(old) is None


def test_prune_by_size_evicts_least_recently_used(cache):
    now = time.time()
    oldest = _stored_entry(cache, "oldest", 400, now - 300)
    middle = _stored_entry(cache, "middle", 400, now - 200)
    newest = _stored_entry(cache, "newest", 400, now - 100)

    removed = cache.prune(max_bytes=900)

    assert [e.key for e in removed] == [oldest]
    assert {e.key for e in cache.entries()} == {middle, newest}
    assert sum(e.bytes for e in cache.entries()) == 800


def test_prune_skips_an_entry_another_builder_holds(cache):
    key = _stored_entry(cache, "busy", 10, time.time() - 10 * 86400)
    other_builder = FileLock(cache.root / "locks" / f"{key}.lock")
    with other_builder:
        assert cache.prune(older_than_s=0) == []
    assert [e.key for e in cache.prune(older_than_s=0)] == [key]


def test_prune_clears_staging_left_by_dead_builders(cache):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    abandoned = cache.root / "staging" / f"{socket.gethostname()}-{dead_pid}-abcd1234"
    (abandoned / "data").mkdir(parents=True)
    alive = cache.root / "staging" / f"{socket.gethostname()}-{os.getpid()}-efgh5678"
    alive.mkdir()
    other_host = cache.root / "staging" / f"elsewhere-{dead_pid}-ijkl9012"
    other_host.mkdir()

    cache.prune(older_than_s=86400)

    assert sorted(os.listdir(cache.root / "staging")) == sorted([alive.name, other_host.name])


def test_record_is_plain_json(cache, tmp_path):
    key = BuildCache.key("verify", {"n": 10})
    stored = cache.put(key, _one_file(tmp_path / "r.json", 3), {"psnr": 41.0})
    record = json.loads((stored.parent / store_module.RECORD).read_text())
    assert record["digest"] == hashlib.sha256(b"\0\0\0").hexdigest()
    assert record["meta"] == {"psnr": 41.0} and record["stage"] == "verify"
    with pytest.raises(TypeError, match="plain JSON"):
        cache.put(key, tmp_path / "r.json", {"path": Path("/x")})
    assert cache.get(key) == stored  # the failed put left the old entry alone
