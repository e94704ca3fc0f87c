"""Fixtures: synthetic snapshots on disk and a fake Hugging Face cache."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
from sources_helpers import SEED

from sdbuild.sources import write_synthetic_snapshot


@pytest.fixture(scope="session")
def snapshot_dir(tmp_path_factory):
    """Synthetic snapshots written once per session, keyed by architecture (read-only for tests)."""
    made: dict[str, Path] = {}

    def make(architecture: str) -> Path:
        if architecture not in made:
            made[architecture] = write_synthetic_snapshot(
                architecture, SEED, tmp_path_factory.mktemp("snapshots") / architecture
            )
        return made[architecture]

    return make


@pytest.fixture
def snapshot_copy(snapshot_dir, tmp_path):
    """A private, modifiable copy of a synthetic snapshot."""

    def copy(architecture: str = "tiny-sd21-base", name: str = "model") -> Path:
        return Path(shutil.copytree(snapshot_dir(architecture), tmp_path / name))

    return copy


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache (HF_HUB_CACHE) and a function that adds a snapshot to it in
    the real layout: blobs named by sha256, snapshot files symlinked to them, refs/main."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def add(repo_id: str, snapshot: Path, commit: str) -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        snapshot_root = repo / "snapshots" / commit
        for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
            blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
            shutil.copyfile(path, blob)
            link = snapshot_root / path.relative_to(snapshot)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        return snapshot_root

    return add
