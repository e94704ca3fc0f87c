"""Two builds of one recipe, in other processes, clocks and folders, are identical byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdbuild.package_io import file_digests

HERE = Path(__file__).parent


def build_in_subprocess(out: Path, fake_date: str, env_extra: dict, *overrides: str) -> Path:
    env = {**os.environ, "PYTHONHASHSEED": "123", **env_extra}
    result = subprocess.run(
        [sys.executable, str(HERE / "fake_clock_build.py"), fake_date, f"output.dir={out}",
         "cache.enabled=false", *overrides],
        capture_output=True, text=True, env=env, cwd=HERE.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (build,) = [p for p in out.glob("*/*") if not p.name.startswith(".")]
    return build


def tree_digests(build: Path) -> dict[str, str]:
    """Every file of the build except build-info.json (which records the clock on purpose)."""
    return {k: v for k, v in file_digests(build).items() if k != "build-info.json"}


def test_rebuild_in_another_process_clock_and_folder_is_identical(tiny_build, tmp_path):
    other = build_in_subprocess(tmp_path / "elsewhere", "2031-05-06", {"TZ": "Asia/Tokyo"})
    assert other.name == tiny_build.name, "same recipe and source give the same build id"
    assert tree_digests(other) == tree_digests(tiny_build)
    assert len(tree_digests(other)) > 10


def test_source_date_epoch_is_honoured_and_reproducible(tmp_path):
    from sdbuild.quiet import import_coremltools

    epoch = {"SOURCE_DATE_EPOCH": "1700000000"}  # 2023-11-14 UTC
    first = build_in_subprocess(tmp_path / "a", "2001-01-01", epoch, "components=[text_encoder]")
    second = build_in_subprocess(tmp_path / "b", "2040-12-31", {**epoch, "TZ": "America/Anchorage"}, "components=[text_encoder]")
    assert tree_digests(first) == tree_digests(second)
    ct = import_coremltools()
    (package,) = first.glob("*.mlpackage")
    metadata = ct.models.MLModel(str(package), skip_model_load=True).get_spec().description.metadata.userDefined
    assert metadata["com.github.apple.coremltools.conversion_date"] == "2023-11-14"
