"""save_package / normalize_package / package_digest on one tiny program, in this process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from sdbuild import package_io
from sdbuild.errors import SdbuildError
from sdbuild.package_io import (
    CONVERSION_DATE_KEY, file_digests, normalize_package, package_digest, replace_path, save_package,
)

SPEC_FILE = "Data/com.apple.CoreML/model.mlmodel"
WEIGHTS_FILE = "Data/com.apple.CoreML/weights/weight.bin"


@pytest.fixture(autouse=True)
def _no_source_date(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _metadata(package: Path) -> dict[str, str]:
    from sdbuild.quiet import import_coremltools

    spec = import_coremltools().utils.load_spec(str(package))
    return dict(spec.description.metadata.userDefined)


def test_normalize_makes_two_coremltools_saves_identical(tmp_path, tiny_mlmodel):
    from sdbuild.quiet import import_coremltools

    ct = import_coremltools()
    # A second MLModel of the same program gets its own temporary package, with new identifiers.
    twin = ct.models.MLModel(tiny_mlmodel.get_spec(), weights_dir=tiny_mlmodel.weights_dir, skip_model_load=True)
    first, second = tmp_path / "a.mlpackage", tmp_path / "b.mlpackage"
    tiny_mlmodel.save(str(first))
    twin.save(str(second))
    assert file_digests(first)["Manifest.json"] != file_digests(second)["Manifest.json"]

    normalize_package(first)
    normalize_package(second)

    assert file_digests(first) == file_digests(second)
    saved = tmp_path / "saved.mlpackage"
    save_package(tiny_mlmodel, saved)
    assert package_digest(saved) == package_digest(first)


def test_conversion_date_dropped_without_source_date_epoch(tmp_path, tiny_mlmodel):
    assert CONVERSION_DATE_KEY in tiny_mlmodel.user_defined_metadata  # coremltools stamped it
    save_package(tiny_mlmodel, tmp_path / "m.mlpackage", metadata={"b": "2", "a": "1"})
    metadata = _metadata(tmp_path / "m.mlpackage")
    assert CONVERSION_DATE_KEY not in metadata
    assert metadata["a"] == "1" and metadata["b"] == "2"
    assert metadata["com.github.apple.coremltools.version"]  # the rest of coremltools' metadata stays


def test_conversion_date_from_source_date_epoch_in_utc(tmp_path, tiny_mlmodel, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86399")  # 1970-01-01 23:59:59 UTC
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    save_package(tiny_mlmodel, tmp_path / "m.mlpackage")
    assert _metadata(tmp_path / "m.mlpackage")[CONVERSION_DATE_KEY] == "1970-01-01"


def test_invalid_source_date_epoch_is_a_clear_error(tmp_path, tiny_mlmodel, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(SdbuildError, match="SOURCE_DATE_EPOCH='yesterday'"):
        save_package(tiny_mlmodel, tmp_path / "m.mlpackage")
    assert not (tmp_path / "m.mlpackage").exists()


def test_metadata_values_must_be_strings(tmp_path, tiny_mlmodel):
    with pytest.raises(SdbuildError, match="not a string pair"):
        save_package(tiny_mlmodel, tmp_path / "m.mlpackage", metadata={"steps": 50})


def test_destination_must_be_an_mlpackage(tmp_path, tiny_mlmodel):
    with pytest.raises(SdbuildError, match=r"\.mlpackage suffix"):
        save_package(tiny_mlmodel, tmp_path / "model.mlmodel")


def test_normalize_rejects_a_folder_that_is_not_a_package(tmp_path):
    with pytest.raises(SdbuildError, match="no Manifest.json"):
        normalize_package(tmp_path)


def test_flipped_or_truncated_bytes_change_the_digest(tmp_path, tiny_mlmodel):
    package = tmp_path / "m.mlpackage"
    save_package(tiny_mlmodel, package)
    original, original_files = package_digest(package), file_digests(package)
    weights = package / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())

    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert package_digest(package) != original
    changed = {k for k, v in file_digests(package).items() if original_files[k] != v}
    assert changed == {WEIGHTS_FILE}

    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert package_digest(package) == original
    weights.write_bytes(bytes(data[:-1]))
    assert package_digest(package) != original


def test_digest_depends_on_names_and_content_not_location(tmp_path):
    folder = tmp_path / "one"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.bin").write_bytes(b"abc")
    (folder / "y.txt").write_bytes(b"")
    copy = tmp_path / "elsewhere" / "two"
    shutil.copytree(folder, copy)
    assert package_digest(copy) == package_digest(folder)
    assert file_digests(folder) == {
        "sub/x.bin": hashlib.sha256(b"abc").hexdigest(),
        "y.txt": hashlib.sha256(b"").hexdigest(),
    }
    (copy / "y.txt").rename(copy / "z.txt")
    assert package_digest(copy) != package_digest(folder)
    assert package_digest(folder / "sub" / "x.bin") == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(SdbuildError, match="no such file"):
        package_digest(tmp_path / "missing")


def _boom(*args, **kwargs):
    raise RuntimeError("interrupted mid-write")


def test_interrupted_save_leaves_no_destination(tmp_path, tiny_mlmodel, monkeypatch):
    dest = tmp_path / "out" / "m.mlpackage"
    monkeypatch.setattr(package_io, "_rewrite_spec", _boom)  # after coremltools wrote its files
    with pytest.raises(RuntimeError, match="mid-write"):
        save_package(tiny_mlmodel, dest)
    assert os.listdir(dest.parent) == []


def test_interrupted_save_keeps_the_existing_package(tmp_path, tiny_mlmodel, monkeypatch):
    dest = tmp_path / "m.mlpackage"
    save_package(tiny_mlmodel, dest, metadata={"build": "old"})
    before = package_digest(dest)
    monkeypatch.setattr(package_io, "_manifest_bytes", _boom)  # after the spec was rewritten
    with pytest.raises(RuntimeError, match="mid-write"):
        save_package(tiny_mlmodel, dest, metadata={"build": "new"})
    assert package_digest(dest) == before
    assert os.listdir(tmp_path) == ["m.mlpackage"]


def test_save_replaces_an_existing_package(tmp_path, tiny_mlmodel):
    dest = tmp_path / "m.mlpackage"
    save_package(tiny_mlmodel, dest, metadata={"build": "old"})
    (dest / "stale.txt").write_text("from the old build")
    save_package(tiny_mlmodel, dest, metadata={"build": "new"})
    assert _metadata(dest)["build"] == "new"
    assert not (dest / "stale.txt").exists()
    assert os.listdir(tmp_path) == ["m.mlpackage"]


def test_replace_path_restores_the_old_content_when_the_swap_fails(tmp_path, monkeypatch):
    dest, staged = tmp_path / "dest", tmp_path / "staged"
    dest.mkdir()
    (dest / "f").write_text("old")
    staged.mkdir()
    (staged / "f").write_text("new")
    real_replace = os.replace

    def fail_on_the_new_content(src, dst):
        if Path(src) == staged:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(package_io.os, "replace", fail_on_the_new_content)
    with pytest.raises(OSError, match="disk full"):
        replace_path(staged, dest)
    assert (dest / "f").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["dest", "staged"]


def test_manifest_is_coremltools_layout_with_derived_identifiers(tmp_path, tiny_mlmodel):
    package = tmp_path / "m.mlpackage"
    save_package(tiny_mlmodel, package)
    text = (package / "Manifest.json").read_text()
    manifest = json.loads(text)
    assert text == json.dumps(manifest, indent=4, sort_keys=True) + "\n"
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    assert root["path"] == "com.apple.CoreML/model.mlmodel"
    paths = sorted(item["path"] for item in manifest["itemInfoEntries"].values())
    assert paths == ["com.apple.CoreML/model.mlmodel", "com.apple.CoreML/weights"]
    assert oct((package / SPEC_FILE).stat().st_mode & 0o777) == "0o644"
