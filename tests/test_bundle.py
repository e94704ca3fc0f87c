"""`sdbuild bundle`: the Resources/ folder of compiled models Swift apps load (compiler faked on Linux)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from sdbuild.cli import main
from sdbuild.manifest import read_manifest, write_manifest
from sdbuild.stages.record import file_info

# Stands in for `xcrun coremlcompiler compile PACKAGE OUT_DIR`, which writes OUT_DIR/<stem>.mlmodelc.
FAKE_XCRUN = """#!/bin/sh
[ "$1 $2" = "coremlcompiler compile" ] || { echo "unexpected: $*" >&2; exit 64; }
[ -z "$FAKE_XCRUN_FAIL" ] || { echo "error: unsupported deployment target" >&2; exit 1; }
name=$(basename "$3" .mlpackage)
mkdir -p "$4/$name.mlmodelc" && cp "$3/Data/com.apple.CoreML/model.mlmodel" "$4/$name.mlmodelc/model.mil"
"""


@pytest.fixture
def fake_xcrun(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "xcrun"
    script.write_text(FAKE_XCRUN)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return script


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_every_component_compiles_under_its_swift_name(tiny_build, tmp_path, fake_xcrun):
    out = tmp_path / "Resources"
    assert main(["bundle", str(tiny_build), "--out", str(out)]) == 0
    assert listing(out) == {"TextEncoder.mlmodelc", "Unet.mlmodelc", "VAEDecoder.mlmodelc",
                            "VAEEncoder.mlmodelc", "vocab.json", "merges.txt"}
    unet_package = next(tiny_build.glob("*_unet.mlpackage"))
    assert (out / "Unet.mlmodelc" / "model.mil").read_bytes() == \
        (unet_package / "Data/com.apple.CoreML/model.mlmodel").read_bytes(), "each name gets its own package"
    assert (out / "vocab.json").read_bytes() == (tiny_build / "vocab.json").read_bytes()


def test_a_chunked_unet_ships_as_its_chunks(tiny_ane_build, tmp_path, fake_xcrun):
    out = tmp_path / "Resources"
    assert main(["bundle", str(tiny_ane_build), "--out", str(out)]) == 0
    compiled = {name for name in listing(out) if name.endswith(".mlmodelc")}
    assert compiled == {"TextEncoder.mlmodelc", "UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc", "VAEDecoder.mlmodelc"}


def test_a_second_tokenizer_keeps_its_folder(tiny_build, tmp_path, fake_xcrun):
    """SDXL sources whose tokenizer_2 differs ship it in tokenizer_2/ (write_tokenizer_files)."""
    build = tmp_path / tiny_build.name
    shutil.copytree(tiny_build, build)
    (build / "tokenizer_2").mkdir()
    merges = (build / "merges.txt").read_text()
    (build / "tokenizer_2" / "merges.txt").write_text(merges)
    manifest = read_manifest(build)
    manifest.tokenizer.append(file_info(build, build / "tokenizer_2" / "merges.txt"))
    write_manifest(manifest, build)
    out = tmp_path / "Resources"
    assert main(["bundle", str(build), "--out", str(out)]) == 0
    assert (out / "tokenizer_2" / "merges.txt").read_text() == merges


def test_default_folder_sits_beside_the_build(tiny_build, tmp_path, fake_xcrun):
    build = tmp_path / tiny_build.name
    shutil.copytree(tiny_build, build)
    assert main(["bundle", str(build)]) == 0
    assert (tmp_path / f"{tiny_build.name}-Resources" / "Unet.mlmodelc").is_dir()


def test_without_xcode_it_says_where_to_run(tiny_build, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["bundle", str(tiny_build), "--out", str(tmp_path / "Resources")]) == 2
    err = capsys.readouterr().err
    assert "only macOS has" in err and "copy the build folder to a Mac" in err
    assert not (tmp_path / "Resources").exists()


def test_a_compiler_failure_keeps_the_previous_folder(tiny_build, tmp_path, fake_xcrun, monkeypatch, capsys):
    out = tmp_path / "Resources"
    assert main(["bundle", str(tiny_build), "--out", str(out)]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    monkeypatch.setenv("FAKE_XCRUN_FAIL", "1")
    assert main(["bundle", str(tiny_build), "--out", str(out)]) == 2
    assert "coremlcompiler failed on" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert listing(tmp_path) == {"Resources", "bin"}, "no partial folder is left beside it"


def test_a_tampered_build_is_refused(tiny_build, tmp_path, fake_xcrun, capsys):
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    (build / "merges.txt").write_text("#version: 0.2\n")
    assert main(["bundle", str(build), "--out", str(tmp_path / "Resources")]) == 2
    assert "does not match its manifest" in capsys.readouterr().err
    assert not (tmp_path / "Resources").exists()


def test_package_names_follow_the_reference():
    from sdbuild.contract import package_file_name

    assert package_file_name("stabilityai/stable-diffusion-2-1-base", "unet", chunk=2) == \
        "Stable_Diffusion_version_stabilityai_stable-diffusion-2-1-base_unet_chunk2.mlpackage"
    assert package_file_name("lllyasviel/sd-controlnet-canny", "controlnet") == \
        "ControlNet_lllyasviel_sd-controlnet-canny.mlpackage"
