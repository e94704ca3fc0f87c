"""Two builder processes asking for the same entry at the same moment: one creates, one waits and hits."""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from pathlib import Path

from sdbuild.cache import BuildCache

KEY = BuildCache.key("convert", {"component": "unet", "model": "tiny"})
PAYLOAD = b"converted weights " * 4096


def _slow_create(folder: Path, log: Path) -> dict:
    with open(log, "a") as stream:  # O_APPEND: each line lands whole
        stream.write(f"{os.getpid()}\n")
    for part in range(4):  # written slowly, so a reader that did not wait would see it half done
        with open(folder / "weight.bin", "ab") as stream:
            stream.write(PAYLOAD[part * len(PAYLOAD) // 4:(part + 1) * len(PAYLOAD) // 4])
        time.sleep(0.2)
    return {"pid": os.getpid()}


def _builder(root: str, log: str, start, results) -> None:
    cache = BuildCache(Path(root))
    start.wait()
    path, hit = cache.get_or_create(KEY, lambda folder: _slow_create(folder, Path(log)))
    results.put((str(path), hit, (path / "weight.bin").read_bytes() == PAYLOAD))


def test_concurrent_builders_create_an_entry_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    log = tmp_path / "creations.log"
    builders = [
        context.Process(target=_builder, args=(str(tmp_path / "cache"), str(log), start, results))
        for _ in range(2)
    ]
    for builder in builders:
        builder.start()
    outcomes = [results.get(timeout=120) for _ in builders]
    for builder in builders:
        builder.join(timeout=60)
        assert builder.exitcode == 0

    assert len(log.read_text().splitlines()) == 1
    assert sorted(hit for _, hit, _ in outcomes) == [False, True]
    assert len({path for path, _, _ in outcomes}) == 1
    assert all(complete for _, _, complete in outcomes)
    cache = BuildCache(tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a corrupt entry would warn
        assert cache.get(KEY) == Path(outcomes[0][0])
    assert [e.key for e in cache.entries()] == [KEY]
    assert os.listdir(tmp_path / "cache" / "staging") == []
