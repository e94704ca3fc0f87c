"""A build from a single original-layout checkpoint and a build of the same weights from a
diffusers folder give byte-identical packages (the recipe tiny-single-file, end to end)."""

from __future__ import annotations

import json
from pathlib import Path

from sdbuild.cli import main
from sdbuild.sources import write_synthetic_snapshot
from sdbuild.sources.synthetic_file import write_synthetic_single_file

ARCHITECTURE, SEED = "tiny-sd15", 0
NAME = "tiny-sd15"  # model.id: the name packages carry, so both routes name them alike


# Packages follow from weights, configs and names. Every submodel's weights, the UNet's included,
# are compared tensor by tensor in tests/sources; here the text encoder and VAE decoder cover the
# rest end to end at a fraction of the UNet's conversion time (~40 s of CPU per build).
SCOPE = ["components=[text_encoder,vae_decoder]", "verify=false"]


def _build(overrides: list[str], out: Path, cache: Path) -> dict:
    assert main(["recipe=tiny-single-file", f"model.id={NAME}", f"output.dir={out}", f"cache.dir={cache}",
                 *SCOPE, *overrides]) == 0
    (build,) = [p for p in (out / "tiny-single-file").iterdir() if not p.name.startswith(".")]
    return json.loads((build / "manifest.json").read_text())


def test_single_file_and_diffusers_folder_builds_are_byte_identical(tmp_path, shared_cache_dir):
    checkpoint = write_synthetic_single_file(ARCHITECTURE, SEED, tmp_path / "model.safetensors")
    folder = write_synthetic_snapshot(ARCHITECTURE, SEED, tmp_path / "folder")
    from_file = _build([f"model.path={checkpoint}"], tmp_path / "file-build", shared_cache_dir)
    from_folder = _build(["model.source=local", f"model.path={folder}"], tmp_path / "folder-build", shared_cache_dir)

    assert from_file["source"]["kind"] == "file" and from_folder["source"]["kind"] == "local"
    assert from_file["build_id"] != from_folder["build_id"]
    packages = {name: info["sha256"] for name, info in from_file["components"].items()}
    assert set(packages) == {"text_encoder", "vae_decoder"}
    assert packages == {name: info["sha256"] for name, info in from_folder["components"].items()}
    assert from_file["tokenizer"] == from_folder["tokenizer"]


def test_mismatched_architecture_fails_in_one_line_before_work(tmp_path, capsys):
    checkpoint = write_synthetic_single_file(ARCHITECTURE, SEED, tmp_path / "model.safetensors")
    overrides = ["recipe=tiny-single-file", f"model.path={checkpoint}", "model.architecture=tiny-sdxl-base",
                 f"output.dir={tmp_path / 'out'}", f"cache.dir={tmp_path / 'cache'}"]
    assert main(overrides) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "SD 1.x checkpoint but model.architecture=tiny-sdxl-base is SDXL base" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"], "nothing written"
