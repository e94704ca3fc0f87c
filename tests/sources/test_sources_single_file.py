"""Single-file checkpoints (model.source=file): the original-layout file written from synthetic
weights loads back to exactly the synthetic diffusers folder's weights, and bad files fail in one
line before any work, leaving nothing behind."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from sources_helpers import SEED, ModelConfig

from sdbuild.errors import SdbuildError
from sdbuild.sources import load_submodel, resolve_source
from sdbuild.sources.single_file import SNAPSHOTS_FOLDER
from sdbuild.sources.synthetic import resolve_synthetic
from sdbuild.sources.synthetic_file import write_synthetic_single_file


@pytest.fixture(scope="session")
def single_file(tmp_path_factory):
    """Synthetic single files written once per session, keyed by (architecture, suffix)."""
    made: dict[tuple[str, str], Path] = {}

    def make(architecture: str = "tiny-sd15", suffix: str = ".safetensors") -> Path:
        if (architecture, suffix) not in made:
            dest = tmp_path_factory.mktemp("single-files") / f"{architecture}{suffix}"
            made[architecture, suffix] = write_synthetic_single_file(architecture, SEED, dest)
        return made[architecture, suffix]

    return make


def _file_config(path, architecture="tiny-sd15", **overrides) -> ModelConfig:
    return ModelConfig("file", path=str(path), architecture=architecture, **overrides)


def _leftovers(cache: Path) -> list[str]:
    folder = cache / SNAPSHOTS_FOLDER
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("architecture", ["tiny-sd15", "tiny-sd21-base", "tiny-sdxl-base"])
def test_single_file_loads_exactly_the_synthetic_weights(single_file, tmp_path, architecture):
    path = single_file(architecture)
    source = resolve_source(_file_config(path, architecture), tmp_path)
    assert source.kind == "file"
    assert source.model_id == f"file/{architecture}"
    assert source.revision == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source.identity()["revision"] == source.revision
    synthetic = resolve_synthetic(architecture, SEED)
    folders = [f for f in synthetic.configs if f not in ("scheduler", "safety_checker")]
    assert sorted(f for f in source.configs if f != "scheduler") == sorted(folders)
    for folder in folders:
        loaded = load_submodel(source, folder).state_dict()
        expected = load_submodel(synthetic, folder).state_dict()
        assert loaded.keys() == expected.keys(), folder
        different = [k for k in loaded if not torch.equal(loaded[k], expected[k])]
        assert not different, f"{folder}: {different[:3]}"


def test_conversion_is_cached_by_content(single_file, tmp_path):
    path = single_file()
    first = resolve_source(_file_config(path), tmp_path)
    (marker := first.root / "unet" / "config.json").touch()
    mtime = marker.stat().st_mtime_ns
    again = resolve_source(_file_config(path, id="my/model"), tmp_path)
    assert again.root == first.root and again.digest == first.digest
    assert again.model_id == "my/model"
    assert marker.stat().st_mtime_ns == mtime, "the converted folder was written again"
    assert _leftovers(tmp_path) == [first.root.name]


def test_pickle_checkpoint_needs_allow_pickle(single_file, tmp_path):
    path = single_file(suffix=".ckpt")
    with pytest.raises(SdbuildError, match=r"is a pickle checkpoint") as info:
        resolve_source(_file_config(path), tmp_path)
    assert "model.allow_pickle=true" in info.value.hint
    assert _leftovers(tmp_path) == []
    source = resolve_source(_file_config(path, allow_pickle=True), tmp_path)
    from_safetensors = resolve_source(_file_config(single_file()), tmp_path)
    assert source.digest == from_safetensors.digest, "same tensors, same converted folder content"


@pytest.mark.parametrize(
    "architecture, expected",
    [
        ("tiny-sd21-base", r"is an SD 1\.x checkpoint but model\.architecture=tiny-sd21-base is SD 2\.x"),
        ("tiny-sdxl-base", r"is an SD 1\.x checkpoint but model\.architecture=tiny-sdxl-base is SDXL base"),
    ],
)
def test_architecture_mismatch_names_both(single_file, tmp_path, architecture, expected):
    with pytest.raises(SdbuildError, match=expected) as info:
        resolve_source(_file_config(single_file(), architecture), tmp_path)
    assert "sd15" in info.value.hint and "tiny-sd15" in info.value.hint
    assert _leftovers(tmp_path) == []


def test_same_family_other_size_fails_before_anything_is_kept(single_file, snapshot_dir, tmp_path):
    # The real sd15 needs a real tokenizer; a synthetic snapshot's stands in for it here.
    config = _file_config(single_file(), "sd15", tokenizer=str(snapshot_dir("tiny-sd15")))
    with pytest.raises(SdbuildError, match=r"does not fit architecture 'sd15': its text_encoder lacks 160 tensors"):
        resolve_source(config, tmp_path)
    assert _leftovers(tmp_path) == []


def test_real_architecture_needs_a_tokenizer(single_file, tmp_path):
    with pytest.raises(SdbuildError, match=r"carries no tokenizer") as info:
        resolve_source(_file_config(single_file(), "sd15"), tmp_path)
    assert "model.tokenizer=" in info.value.hint


def test_bad_files_are_named_in_one_line(single_file, snapshot_dir, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(single_file().read_bytes()[:-100])
    diffusers_unet = snapshot_dir("tiny-sd15") / "unet" / "diffusion_pytorch_model.safetensors"
    wrong_suffix = tmp_path / "model.gguf"
    wrong_suffix.write_bytes(b"GGUF")
    cases = [
        (truncated, r"truncated\.safetensors' is truncated or corrupt"),
        (tmp_path / "missing.safetensors", r"checkpoint file '.*missing\.safetensors' does not exist"),
        (wrong_suffix, r"model\.gguf' is not a checkpoint file \(unknown extension '\.gguf'\)"),
        (diffusers_unet, r"is not a Stable Diffusion single-file checkpoint \(no model\.diffusion_model\.\* tensors\)"),
    ]
    for path, expected in cases:
        with pytest.raises(SdbuildError, match=expected) as info:
            resolve_source(_file_config(path), tmp_path / "cache")
        assert "\n" not in str(info.value)
    assert _leftovers(tmp_path / "cache") == []


def test_failed_conversion_leaves_nothing(single_file, tmp_path, monkeypatch):
    import sdbuild.sources.synthetic_snapshot as snapshot_writer

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(snapshot_writer, "write_pipeline_files", fail)
    with pytest.raises(OSError, match="disk full"):
        resolve_source(_file_config(single_file()), tmp_path)
    assert _leftovers(tmp_path) == []


def test_synth_file_command_writes_the_checkpoint(tmp_path, capsys):
    from sdbuild.cli import main

    dest = tmp_path / "model.safetensors"
    assert main(["synth-file", "--architecture", "tiny-sd21-base", "--seed", str(SEED), "--out", str(dest)]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    again = write_synthetic_single_file("tiny-sd21-base", SEED, tmp_path / "again.safetensors")
    assert dest.read_bytes() == again.read_bytes()
    assert main(["synth-file", "--out", str(tmp_path / "model.onnx")]) == 2
    assert "cannot write a checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.safetensors", "model.safetensors"]


def test_tokenizer_comes_from_model_tokenizer_when_given(single_file, snapshot_dir, tmp_path):
    tokenizers = tmp_path / "tokenizers"
    shutil.copytree(snapshot_dir("tiny-sd15") / "tokenizer", tokenizers / "tokenizer")
    merges = tokenizers / "tokenizer" / "merges.txt"
    merges.write_text(merges.read_text() + "z z\n")
    default = resolve_source(_file_config(single_file()), tmp_path / "cache")
    chosen = resolve_source(_file_config(single_file(), tokenizer=str(tokenizers)), tmp_path / "cache")
    assert (chosen.root / "tokenizer" / "merges.txt").read_text() == merges.read_text()
    assert chosen.digest != default.digest and chosen.root != default.root
    with pytest.raises(SdbuildError, match=r"has no vocab\.json and merges\.txt"):
        resolve_source(_file_config(single_file(), tokenizer=str(tmp_path / "nowhere")), tmp_path / "cache")
