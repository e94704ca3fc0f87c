"""CI regression of artifacts: small recipes rebuilt and checked against committed expectations
(tests/expectations/<recipe>.json; after an intended change: make expectations)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sdbuild.cli import main
from sdbuild.errors import SdbuildError
from sdbuild.expectations import compare, expectations_of, read_expectations
from sdbuild.manifest import read_manifest

EXPECTATIONS = Path(__file__).parent / "expectations"


def check_against_committed(build: Path, recipe: str, capsys) -> None:
    code = main(["expect", str(build), str(EXPECTATIONS / f"{recipe}.json")])
    out = capsys.readouterr().out
    assert code == 0, f"{recipe} no longer builds what tests/expectations/{recipe}.json records:\n{out}"


def test_tiny_meets_its_committed_expectations(tiny_build, capsys):
    check_against_committed(tiny_build, "tiny", capsys)


def test_tiny_ane_meets_its_committed_expectations(tiny_ane_build, capsys):
    check_against_committed(tiny_ane_build, "tiny-ane", capsys)
    manifest = read_manifest(tiny_ane_build)
    unet = manifest.components["unet"]
    assert unet.compression.mode == "kmeans" and len(unet.chunks) == 2, "the recipe exercises compression and chunking"


@pytest.fixture
def tiny_expected(tiny_build) -> dict:
    return expectations_of(read_manifest(tiny_build))


def test_a_build_meets_the_expectations_it_writes(tiny_expected):
    assert compare(tiny_expected, tiny_expected) == ([], [])


def changed(expectations: dict, field: str, change) -> dict:
    """A copy with the value at a dotted field path replaced by change(value)."""
    result = copy.deepcopy(expectations)
    *path, last = field.split(".")
    holder = result
    for key in path:
        holder = holder[int(key)] if isinstance(holder, list) else holder[key]
    index = int(last) if isinstance(holder, list) else last
    holder[index] = change(holder[index])
    return result


@pytest.mark.parametrize("field, change, reported", [
    ("components.unet.sha256", lambda v: "0" * 64, True),
    ("components.unet.bytes", lambda v: v + 1, True),
    ("components.unet.interface.inputs.0.shape.0", lambda v: v + 1, True),
    ("components.vae_decoder.compression.mode", lambda v: "kmeans", True),
    ("components.unet.psnr_db.noise_pred", lambda v: v + 0.4, False),  # within the 0.5 dB tolerance
    ("components.unet.psnr_db.noise_pred", lambda v: v - 2.0, True),
])
def test_changes_are_reported_by_field(tiny_expected, field, change, reported):
    differences, _ = compare(changed(tiny_expected, field, change), tiny_expected)
    assert [d[0] for d in differences] == ([field] if reported else [])


def test_psnr_above_the_lossless_ceiling_is_not_compared(tiny_expected):
    field = "components.unet.psnr_db.noise_pred"
    near_exact = changed(tiny_expected, field, lambda v: 180.0)
    assert compare(near_exact, changed(tiny_expected, field, lambda v: 140.0))[0] == []
    assert [d[0] for d in compare(near_exact, changed(tiny_expected, field, lambda v: 90.0))[0]] == [field]


def test_hashes_written_on_another_machine_are_noted_not_compared(tiny_expected):
    elsewhere = changed(changed(tiny_expected, "machine", lambda v: "sparc64"), "components.unet.sha256", lambda v: "0" * 64)
    differences, notes = compare(elsewhere, tiny_expected)
    assert differences == [] and "sparc64" in notes[0]
    assert compare(changed(elsewhere, "components.unet.bytes", lambda v: v + 1), tiny_expected)[0], \
        "sizes are still compared"


def test_update_then_check_round_trips_and_a_difference_exits_1(tiny_build, tmp_path, capsys):
    path = tmp_path / "exp" / "tiny.json"
    assert main(["expect", "--update", str(tiny_build), str(path)]) == 0
    assert main(["expect", str(tiny_build), str(path)]) == 0
    data = json.loads(path.read_text())
    data["components"]["unet"]["bytes"] += 1
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["expect", str(tiny_build), str(path)]) == 1
    out = capsys.readouterr().out
    assert "components.unet.bytes" in out and "sdbuild expect --update" in out


@pytest.mark.parametrize("content, message", [
    (None, "no expectations file"),
    ("{not json", "not valid JSON"),
    ('{"components": {}}', "not an sdbuild expectations file"),
])
def test_bad_expectations_files_fail_clearly(tmp_path, content, message):
    path = tmp_path / "e.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SdbuildError, match=message):
        read_expectations(path)
