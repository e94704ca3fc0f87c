"""Two conversions in separate processes, with different clocks, time zones and hash seeds,
give byte-identical packages; coremltools' own save of the same models does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sdbuild.package_io import CONVERSION_DATE_KEY, file_digests, package_digest

CHILD = Path(__file__).with_name("pkgio_child.py")
REPO = Path(__file__).resolve().parents[2]
# 2023-11-14 22:13:20 UTC, already 2023-11-15 in Tokyo: a local-time date would differ.
EPOCH = "1700000000"


def _convert_in_children(tmp_path: Path, source_date_epoch: str | None) -> list[Path]:
    runs = [("2001-02-03", "UTC", "1"), ("2030-12-31", "Asia/Tokyo", "2")]
    children = []
    for index, (fake_date, tz, hash_seed) in enumerate(runs):
        out = tmp_path / f"run{index}"
        out.mkdir()
        env = {**os.environ, "TZ": tz, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        env.pop("SOURCE_DATE_EPOCH", None)
        if source_date_epoch is not None:
            env["SOURCE_DATE_EPOCH"] = source_date_epoch
        command = [sys.executable, str(CHILD), str(out), fake_date]
        children.append((out, subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    for _, child in children:
        output, _ = child.communicate(timeout=300)
        assert child.returncode == 0, output.decode(errors="replace")[-3000:]
    return [out for out, _ in children]


@pytest.fixture(scope="module")
def converted_in_children(tmp_path_factory):
    """SOURCE_DATE_EPOCH value -> the two children's output folders, converted once per module."""
    runs: dict[str | None, list[Path]] = {}

    def get(source_date_epoch: str | None) -> list[Path]:
        if source_date_epoch not in runs:
            runs[source_date_epoch] = _convert_in_children(tmp_path_factory.mktemp("children"), source_date_epoch)
        return runs[source_date_epoch]

    return get


@pytest.mark.parametrize("source_date_epoch", [None, EPOCH], ids=["no-epoch", "epoch"])
def test_separate_processes_give_identical_packages(converted_in_children, source_date_epoch):
    first, second = converted_in_children(source_date_epoch)

    # coremltools alone: random manifest identifiers and each process's (faked) date differ.
    raw_first, raw_second = file_digests(first / "raw.mlpackage"), file_digests(second / "raw.mlpackage")
    assert raw_first["Manifest.json"] != raw_second["Manifest.json"]
    assert raw_first["Data/com.apple.CoreML/model.mlmodel"] != raw_second["Data/com.apple.CoreML/model.mlmodel"]

    digests = file_digests(first / "model.mlpackage")
    assert digests == file_digests(second / "model.mlpackage")
    assert set(digests) == {
        "Manifest.json", "Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin",
    }
    assert package_digest(first / "model.mlpackage") == package_digest(second / "model.mlpackage")


def test_saved_package_loads_with_expected_spec_and_metadata(converted_in_children):
    from pkgio_child import USER_METADATA

    from sdbuild.quiet import import_coremltools

    ct = import_coremltools()
    package = converted_in_children(EPOCH)[1] / "model.mlpackage"
    manifest_before = (package / "Manifest.json").read_bytes()

    model = ct.models.MLModel(str(package), skip_model_load=True)

    spec = model.get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [i.name for i in spec.description.input] == ["sample"]
    assert [o.name for o in spec.description.output] == ["noise_pred"]
    metadata = dict(model.user_defined_metadata)
    assert metadata[CONVERSION_DATE_KEY] == "2023-11-14"  # UTC, not the faked clocks nor Tokyo's date
    for key, value in USER_METADATA.items():
        assert metadata[key] == value
    assert Path(model.weights_dir).resolve() == (package / "Data/com.apple.CoreML/weights").resolve()
    # Opening a package makes coremltools rewrite Manifest.json; ours must come back unchanged.
    assert (package / "Manifest.json").read_bytes() == manifest_before
    manifest = json.loads(manifest_before)
    for identifier in manifest["itemInfoEntries"]:
        assert uuid.UUID(identifier).version == 5
