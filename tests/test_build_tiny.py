"""The default recipe builds end to end, offline, into a complete folder that keeps the contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdbuild import builder
from sdbuild.archs import architecture_dir
from sdbuild.cli import main
from sdbuild.contract import ArchInfo, component_interface
from sdbuild.errors import SdbuildError
from sdbuild.manifest import MANIFEST_FILE, Manifest, check_build, read_manifest, write_manifest
from sdbuild.package_io import package_digest
from sdbuild.quiet import import_coremltools

_DTYPES = {65552: "float16", 65568: "float32"}  # Core ML ArrayDataType enum values


def package_interface(path: Path) -> dict:
    """Names, shapes and dtypes as the saved package declares them."""
    ct = import_coremltools()
    description = ct.models.MLModel(str(path), skip_model_load=True).get_spec().description

    def tensors(features):
        return [
            {"name": f.name, "shape": list(f.type.multiArrayType.shape), "dtype": _DTYPES[f.type.multiArrayType.dataType]}
            for f in features
        ]

    return {"inputs": tensors(description.input), "outputs": tensors(description.output)}


def test_build_folder_is_complete(tiny_build):
    names = sorted(p.name for p in tiny_build.iterdir())
    model = "synthetic_tiny-sd21-base"
    assert names == sorted([
        f"Stable_Diffusion_version_{model}_{c}.mlpackage"
        for c in ("text_encoder", "unet", "vae_decoder", "vae_encoder")
    ] + ["build-info.json", "manifest.json", "merges.txt", "vocab.json"])
    assert not [p for p in tiny_build.parent.iterdir() if p.name.startswith(".")], "no staging leftovers"


def test_every_component_keeps_the_contract(tiny_build):
    manifest = read_manifest(tiny_build)
    arch_dir = architecture_dir("tiny-sd21-base")
    arch = ArchInfo.from_configs("tiny-sd21-base", {
        p.name: json.loads((p / "config.json").read_text()) for p in arch_dir.iterdir() if p.is_dir()
    })
    for name, info in manifest.components.items():
        expected = component_interface(name, arch, (16, 16), 2).as_dict()
        assert package_interface(tiny_build / info.file) == expected, name
        assert info.interface.model_dump() == expected, name
    unet = manifest.components["unet"].interface
    assert [t.name for t in unet.inputs] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet.inputs[2].shape == [2, 32, 1, 77] and unet.inputs[0].dtype == "float16"
    assert [(t.name, t.dtype) for t in unet.outputs] == [("noise_pred", "float32")]
    text = manifest.components["text_encoder"].interface
    assert [(t.name, t.shape) for t in text.outputs] == [("last_hidden_state", [1, 77, 32]), ("pooled_outputs", [1, 32])]
    assert manifest.components["vae_encoder"].interface.outputs[0].shape == [1, 8, 16, 16]
    assert manifest.components["vae_decoder"].interface.outputs[0].shape == [1, 3, 128, 128]


def test_manifest_records_the_build(tiny_build):
    manifest = read_manifest(tiny_build)
    assert manifest.build_id == tiny_build.name
    assert manifest.recipe.name == "tiny" and manifest.recipe.config["attention"]["implementation"] == "ORIGINAL"
    assert manifest.source.kind == "synthetic" and manifest.source.family == "sd2"
    assert manifest.source.latent_scaling_factor == pytest.approx(0.18215)
    assert manifest.deployment_target == "macOS13" and manifest.compute_units == "CPU_AND_GPU"
    assert set(manifest.tools) >= {"python", "torch", "coremltools", "diffusers", "transformers", "sdbuild"}
    for name, info in manifest.components.items():
        assert info.sha256 == package_digest(tiny_build / info.file), name
        assert info.precision == "float16" and info.deployment_target == "macOS13"
        assert info.verification.verified, name
        assert min(o.psnr_db for o in info.verification.outputs) >= info.verification.threshold_db
    info = json.loads((tiny_build / "build-info.json").read_text())
    assert set(info["stage_seconds"]) == set(manifest.components)
    for component, stages in info["stage_seconds"].items():  # each timed stage has its peak memory
        peaks = info["stage_peak_gb"][component]
        assert set(peaks) == set(stages) and all(peak > 0.05 for peak in peaks.values()), component
    assert "built_at" not in (tiny_build / MANIFEST_FILE).read_text()


def test_manifest_round_trips_through_its_schema(tiny_build, tmp_path):
    manifest = read_manifest(tiny_build)
    write_manifest(manifest, tmp_path)
    assert read_manifest(tmp_path) == manifest
    assert (tmp_path / MANIFEST_FILE).read_text() == (tiny_build / MANIFEST_FILE).read_text()


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.update(schema_version=99), "schema version 99"),
        (lambda d: d.update(surprise=True), "surprise"),
        (lambda d: d["components"]["unet"].pop("sha256"), "components.unet.sha256"),
    ],
)
def test_invalid_manifest_is_refused(tiny_build, tmp_path, mutate, expected):
    data = json.loads((tiny_build / MANIFEST_FILE).read_text())
    mutate(data)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(SdbuildError, match=expected):
        read_manifest(tmp_path)


def test_corrupt_manifest_json_is_refused(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(SdbuildError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_sdbuild_verify_accepts_build_and_catches_flipped_byte(tiny_build, tmp_path, capsys):
    import shutil

    copy = tmp_path / tiny_build.name
    shutil.copytree(tiny_build, copy)
    assert main(["verify", str(copy)]) == 0
    weights = next(copy.glob("*_unet.mlpackage")) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "_unet.mlpackage: sha256" in out and "1 mismatch" in out
    assert len(check_build(copy).problems) == 1


def test_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    calls = []

    def failing_convert(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in the second component")
        return real_convert(*args, **kwargs)

    from sdbuild.stages import convert

    real_convert = convert.convert_module
    monkeypatch.setattr(convert, "convert_module", failing_convert)
    out = tmp_path / "outputs"
    assert main([f"output.dir={out}", "cache.enabled=false"]) == 1
    assert len(calls) == 2
    leftovers = [p for p in out.rglob("*") if p.is_dir() and p.parent == out / "tiny"]
    assert leftovers == [], "neither a partial nor a staging folder may remain"


def test_manifest_schema_is_exported():
    schema = Manifest.model_json_schema()
    assert "components" in schema["properties"]


def test_verify_false_is_recorded_as_not_verified(tiny_build, shared_cache_dir, tmp_path):
    assert main([f"output.dir={tmp_path}", f"cache.dir={shared_cache_dir}", "verify=false",
                 "components=[vae_decoder]"]) == 0
    (build,) = [p for p in (tmp_path / "tiny").iterdir() if not p.name.startswith(".")]
    verification = read_manifest(build).components["vae_decoder"].verification
    assert not verification.verified and verification.outputs == []
    assert "verify=false" in verification.reason
