"""Integrity on bad input: damaged builds fail every check of their files, manifest paths stay
inside their build, and verification gates are real gates.

Each table row is an input or fault, the exit code, the words the message must contain, and the
check that nothing was left behind (no build folder, no staging, no written file).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sdbuild.cli import main as sdbuild_main
from sdbuild.errors import SdbuildError
from sdbuild.manifest import MANIFEST_FILE, check_build
from sdbuild.runner import cli as runner_cli
from sdbuild.stages import verify as verify_stage

EXPECTATIONS = Path(__file__).parents[1] / "expectations"


# --- helpers (local to this file) ------------------------------------------------------------

def copy_build(build: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "outputs" / build.parent.name / build.name
    shutil.copytree(build, copy)
    return copy


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def left_behind(out: Path) -> list[Path]:
    """Everything a failed build left in its output folder, bar the empty <recipe> folder."""
    return [p for p in out.rglob("*") if not (p.is_dir() and p.parent == out and not any(p.iterdir()))]


def rewrite(path: Path, data: bytes) -> None:
    path.unlink()  # never write through a hard link
    path.write_bytes(data)


def unet_package(build: Path) -> Path:
    return next(build.glob("*_unet.mlpackage"))


def weights(package: Path) -> Path:
    return package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rewrite(path, bytes(data))


def edit_manifest(build: Path, change) -> None:
    data = json.loads((build / MANIFEST_FILE).read_text())
    change(data)
    rewrite(build / MANIFEST_FILE, json.dumps(data).encode())


def run_cli(command: str, build: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    """Exit code and all output of one command on a build."""
    capsys.readouterr()
    if command == "verify":
        code = sdbuild_main(["verify", str(build)])
    elif command == "expect":
        code = sdbuild_main(["expect", str(build), str(EXPECTATIONS / f"{build.parent.name}.json")])
    else:
        code = runner_cli.main(["--build", str(build), "--prompt", "x", "--steps", "1",
                                "--output", str(tmp_path / "image.png")])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_on_damaged_copy(command: str, build: Path, damage, tmp_path: Path, capsys) -> tuple[int, str]:
    """Exit code and output of ``command`` on a damaged copy of ``build``, which must write nothing."""
    copy = copy_build(build, tmp_path)
    damage(copy)
    before = tree(tmp_path)
    code, output = run_cli(command, copy, tmp_path, capsys)
    assert tree(tmp_path) == before, "a refused build is left as it was, and nothing is written"
    return code, output


# --- damaged files: verify, expect and the runner all rehash them ------------------------------

def _delete_package(build: Path) -> None:
    shutil.rmtree(unet_package(build))


def _delete_file_in_package(build: Path) -> None:
    weights(unet_package(build)).unlink()


def _link_out_of_build(build: Path) -> None:
    """vocab.json replaced by a link to an identical file elsewhere: same bytes, not this build's."""
    outside = build.parents[2] / "elsewhere-vocab.json"
    shutil.copy(build / "vocab.json", outside)
    (build / "vocab.json").unlink()
    (build / "vocab.json").symlink_to(outside)


def _link_package_file_out(build: Path) -> None:
    target = weights(unet_package(build))
    outside = build.parents[2] / "elsewhere-weight.bin"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)


DAMAGES = {
    # name: (recipe fixture, damage, words the report must contain)
    "flipped-weight-byte": ("tiny_build", lambda b: flip_byte(weights(unet_package(b))), ["_unet.mlpackage: sha256"]),
    "deleted-package": ("tiny_build", _delete_package, ["_unet.mlpackage: missing"]),
    "deleted-file-in-package": ("tiny_build", _delete_file_in_package, ["_unet.mlpackage: sha256"]),
    "deleted-vocab": ("tiny_build", lambda b: (b / "vocab.json").unlink(), ["vocab.json: missing"]),
    "edited-merges": ("tiny_build", lambda b: rewrite(b / "merges.txt", b"#version: 0.2\n"), ["merges.txt: sha256"]),
    "extra-file": ("tiny_build", lambda b: (b / "notes.txt").write_text("x"), ["notes.txt: not listed in the manifest"]),
    "extra-tokenizer-config": ("tiny_build", lambda b: (b / "tokenizer_config.json").write_text("{}"),
                               ["tokenizer_config.json: not listed"]),
    "vocab-links-out": ("tiny_build", _link_out_of_build, ["vocab.json: vocab.json links outside the build folder"]),
    "package-file-links-out": ("tiny_build", _link_package_file_out, ["_unet.mlpackage:", "weight.bin links outside"]),
    "flipped-chunk-byte": ("tiny_ane_build", lambda b: flip_byte(weights(next(b.glob("*_unet_chunk2.mlpackage")))),
                           ["_unet_chunk2.mlpackage: sha256"]),
}
REFUSALS = {  # command: (exit code, words)
    "verify": (1, ["1 mismatch"]),
    "expect": (1, ["1 mismatch"]),
    "run": (2, ["error:", "does not match its manifest"]),
}


def _drop_tokenizer(build: Path) -> None:
    """A hand-edited manifest that lists no tokenizer, its files removed to match."""
    def drop(data):
        data["tokenizer"] = []
    edit_manifest(build, drop)
    for name in ("vocab.json", "merges.txt"):
        (build / name).unlink()


def test_a_build_without_a_tokenizer_is_refused_in_one_line(tiny_build, tmp_path, capsys):
    code, output = run_on_damaged_copy("run", tiny_build, _drop_tokenizer, tmp_path, capsys)
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert "lists no tokenizer vocab.json" in output


@pytest.mark.parametrize("command", sorted(REFUSALS))
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_build_fails_every_check(damage, command, request, tmp_path, capsys):
    fixture, apply, words = DAMAGES[damage]
    code, output = run_on_damaged_copy(command, request.getfixturevalue(fixture), apply, tmp_path, capsys)
    expected_code, command_words = REFUSALS[command]
    assert code == expected_code, output
    for word in [*words, *command_words]:
        assert word in output, output
    if command == "run":
        assert len(output.strip().splitlines()) == 1, output


def test_expect_passes_an_intact_copy(tiny_build, tmp_path, capsys):
    """The other side of the table: the same copy, undamaged, meets its expectations."""
    code, output = run_cli("expect", copy_build(tiny_build, tmp_path), tmp_path, capsys)
    assert code == 0 and "meets" in output, output


def test_expect_update_refuses_a_damaged_build(tiny_build, tmp_path, capsys):
    build = copy_build(tiny_build, tmp_path)
    (build / "vocab.json").unlink()
    written = tmp_path / "expected.json"
    assert sdbuild_main(["expect", "--update", str(build), str(written)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vocab.json: missing" in err[0], err
    assert not written.exists() and not list(tmp_path.glob(".expected*")), "no expectations from a damaged build"


# --- manifest paths: relative, normalised, inside the build -----------------------------------

def _escape_to_a_verified_copy(build: Path) -> None:
    """The attack of issue 10: the manifest points at a file outside whose hash it also records."""
    package = unet_package(build)
    shutil.copytree(package, build.parents[2] / "elsewhere.mlpackage")

    def point_outside(data):
        data["components"]["unet"]["file"] = "../../../elsewhere.mlpackage"

    edit_manifest(build, point_outside)


def _set_path(where: str, value: str):
    def change(build: Path):
        def set_value(data):
            holder = data
            *keys, last = where.split(".")
            for key in keys:
                holder = holder[int(key)] if isinstance(holder, list) else holder[key]
            holder[int(last) if isinstance(holder, list) else last] = value
        edit_manifest(build, set_value)
    return change


BAD_PATHS = {
    # name: (recipe fixture, change, words)
    "parent-escape-with-matching-hash": ("tiny_build", _escape_to_a_verified_copy,
                                         ["components.unet.file", "'../../../elsewhere.mlpackage'", "'..' segment"]),
    "absolute": ("tiny_build", _set_path("components.vae_decoder.file", "/etc/passwd"), ["components.vae_decoder.file", "is absolute"]),
    "dot-segment": ("tiny_build", _set_path("tokenizer.0.file", "./vocab.json"), ["tokenizer.0.file", "'.' or '..' segment"]),
    "empty-segment": ("tiny_build", _set_path("tokenizer.1.file", "x//merges.txt"), ["tokenizer.1.file", "empty"]),
    "empty": ("tiny_build", _set_path("components.text_encoder.file", ""), ["components.text_encoder.file", "is empty"]),
    "backslash": ("tiny_build", _set_path("components.unet.file", "..\\unet.mlpackage"), ["components.unet.file", "backslash"]),
    "trailing-slash": ("tiny_build", _set_path("components.unet.file", "unet.mlpackage/"), ["components.unet.file", "segment"]),
    "control-character": ("tiny_build", _set_path("tokenizer.0.file", "vocab\x00.json"), ["tokenizer.0.file", "control character"]),
    "chunk-escape": ("tiny_ane_build", _set_path("components.unet.chunks.0.file", "../chunk.mlpackage"),
                     ["components.unet.chunks.0.file", "'..' segment"]),
}


@pytest.mark.parametrize("command", sorted(REFUSALS))
@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_a_manifest_path_outside_the_build_is_refused_in_one_line(case, command, request, tmp_path, capsys):
    fixture, change, words = BAD_PATHS[case]
    code, output = run_on_damaged_copy(command, request.getfixturevalue(fixture), change, tmp_path, capsys)
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1, output
    for word in ["error:", "does not match the manifest schema", "manifest paths are relative", *words]:
        assert word in output, output


def test_the_runner_loads_exactly_the_files_it_verified(tiny_ane_build, tmp_path, monkeypatch):
    from sdbuild.runner import pipeline

    build = copy_build(tiny_ane_build, tmp_path)
    linked = tmp_path / "linked-build"
    linked.symlink_to(build)  # a build reached through a link is still that build
    loaded = []
    monkeypatch.setattr(pipeline, "load_predictor", lambda backend, path, units: loaded.append(path))
    runner = pipeline.Pipeline(linked, backend="evaluator", progress=lambda text: None)
    runner.model("unet")
    runner.model("vae_decoder")
    check = check_build(linked)
    unet = check.manifest.components["unet"]
    assert loaded == [check.paths[c.file] for c in unet.chunks] + [check.paths[check.manifest.components["vae_decoder"].file]]
    assert all(path.is_relative_to(build.resolve()) for path in loaded)


# --- verification gates: typed, plain overrides, refused when they cannot work ---------------

BAD_GATES = [
    # (overrides, words)
    (["min_psnr.unet=-5"], ["min_psnr.unet=-5.0 is not a usable threshold", "min_psnr.unet=35"]),
    (["min_psnr.default=nan"], ["min_psnr.default=nan is not a usable threshold", "min_psnr.default=35"]),
    (["min_psnr.chunks=inf"], ["min_psnr.chunks=inf is not a usable threshold", "min_psnr.chunks=60"]),
    (["min_psnr.vae_decoder=-inf"], ["min_psnr.vae_decoder=-inf", "finite number of dB"]),
    (["min_psnr.vae=30"], ["unknown key 'min_psnr.vae'", "vae_decoder"]),
    (["min_psnr.unet=abc"], ["min_psnr.unet"]),
]


@pytest.mark.parametrize("overrides, words", BAD_GATES, ids=[" ".join(o) for o, _ in BAD_GATES])
def test_a_gate_that_cannot_work_is_refused_before_any_work(overrides, words, tmp_path, capsys, monkeypatch):
    from sdbuild import builder

    monkeypatch.setattr(builder, "build", lambda *a, **k: pytest.fail("the build started"))
    out = tmp_path / "out"
    assert sdbuild_main([*overrides, f"output.dir={out}", "cache.enabled=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], err
    assert not out.exists()


FAILED_GATES = [
    # (recipe fixture, overrides, exit code, words): a build below its gate publishes nothing
    ("tiny_build", ["min_psnr.unet=200"],
     ["unet output 'noise_pred' has PSNR", "below the threshold of 200.00 dB", "lower the gate: min_psnr.unet="]),
    ("tiny_build", ["min_psnr.default=200", "components=[vae_decoder]"],
     ["vae_decoder output 'image'", "below the threshold of 200.00 dB", "min_psnr.vae_decoder="]),
    ("tiny_ane_build", ["recipe=tiny-ane", "min_psnr.chunks=250"],
     ["the unet chunk pipeline has PSNR", "against the whole unet", "below the threshold of 250.00 dB",
      "lower the gate: min_psnr.chunks="]),
]


@pytest.mark.parametrize("fixture, overrides, words", FAILED_GATES, ids=[" ".join(o) for _, o, _ in FAILED_GATES])
def test_a_build_below_its_gate_fails_and_publishes_nothing(fixture, overrides, words, request, shared_cache_dir,
                                                          tmp_path, capsys):
    request.getfixturevalue(fixture)  # its stages are cached: this rebuild only verifies and gates
    out = tmp_path / "out"
    assert sdbuild_main([*overrides, f"output.dir={out}", f"cache.dir={shared_cache_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: verification failed:"), err
    for word in words:
        assert word in err, err
    assert "+min_psnr" not in err, "the hint suggests the plain override, which works"
    assert left_behind(out) == []


def test_plain_min_psnr_overrides_set_each_recorded_threshold(tiny_build, shared_cache_dir, tmp_path):
    """README's `min_psnr.unet=30` works without a leading `+`, and the manifest records the
    threshold each component was gated against."""
    out = tmp_path / "out"
    assert sdbuild_main(["min_psnr.unet=30", "min_psnr.default=20", f"output.dir={out}",
                         f"cache.dir={shared_cache_dir}"]) == 0
    (build,) = (out / "tiny").iterdir()
    manifest = check_build(build).intact().manifest
    thresholds = {name: c.verification.threshold_db for name, c in manifest.components.items()}
    assert thresholds == {"text_encoder": 20.0, "unet": 30.0, "vae_decoder": 20.0, "vae_encoder": 20.0}
    assert manifest.recipe.config["min_psnr"]["unet"] == 30.0


def test_the_chunk_gate_fails_below_its_default():
    """A chunk pipeline that drifts from the whole model (59 dB) fails the default 60 dB gate."""
    from sdbuild.manifest import OutputCheck

    outputs = [OutputCheck(name="noise_pred", psnr_db=80.0)]
    verify_stage.gate("unet", verify_stage.Verified("evaluator", outputs, chunks_psnr_db=61.0), 35.0, 60.0)
    with pytest.raises(SdbuildError, match=r"chunk pipeline has PSNR 59.00 dB .* below the threshold of 60.00 dB"):
        verify_stage.gate("unet", verify_stage.Verified("evaluator", outputs, chunks_psnr_db=59.0), 35.0, 60.0)


def test_every_component_has_a_gate_key():
    from dataclasses import fields

    from sdbuild.config.schema import MinPsnrConfig, min_psnr_key
    from sdbuild.contract import ALL_COMPONENTS

    keys = {f.name for f in fields(MinPsnrConfig)}
    assert keys == {"default", "chunks", *(min_psnr_key(c) for c in ALL_COMPONENTS)}
    gates = MinPsnrConfig(control_unet=25.0)
    assert gates.for_component("control-unet") == 25.0 and gates.for_component("unet") == 35.0
