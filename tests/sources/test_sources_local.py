"""Local sources: diffusers folders on disk, as written by write_synthetic_snapshot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sources_helpers import SEED, ModelConfig, replace_with_pickle
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file

from sdbuild.errors import SdbuildError
from sdbuild.sources import load_submodel, resolve_source
from sdbuild.sources.digest import file_sha256, json_digest


def _local(root, allow_pickle=False):
    return resolve_source(ModelConfig("local", path=str(root), allow_pickle=allow_pickle))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("architecture", ["tiny-sd15", "tiny-sdxl-base"])
def test_local_folder_resolves_and_loads_the_synthetic_weights(snapshot_dir, architecture):
    root = snapshot_dir(architecture)
    source = _local(root)
    synthetic = resolve_source(ModelConfig("synthetic", architecture=architecture))
    assert (source.kind, source.model_id, source.revision) == ("local", f"local/{architecture}", None)
    assert source.root == root
    assert source.arch.components == synthetic.arch.components
    assert source.arch.family == synthetic.arch.family
    assert source.configs["scheduler"] == synthetic.configs["scheduler"]
    for folder in [f for f in synthetic.configs if f != "scheduler"]:
        model = load_submodel(source, folder)
        assert not model.training and {p.dtype for p in model.parameters()} == {torch.float32}
        assert _same_weights(model, load_submodel(synthetic, folder)), folder


def test_digest_is_sha256_of_files_and_follows_content(snapshot_copy):
    root = snapshot_copy()
    source = _local(root)
    hashed = ["model_index.json", "scheduler/scheduler_config.json",
              "tokenizer/merges.txt", "tokenizer/vocab.json"]
    for folder in ["text_encoder", "unet", "vae"]:
        weights = "model" if folder == "text_encoder" else "diffusion_pytorch_model"
        hashed += [f"{folder}/config.json", f"{folder}/{weights}.safetensors"]
    assert source.digest == json_digest(sorted([rel, file_sha256(root / rel)] for rel in hashed))
    assert _local(root).digest == source.digest
    (root / "feature_extractor").mkdir()
    (root / "feature_extractor" / "preprocessor_config.json").write_text("{}")  # not part of the model
    assert _local(root).digest == source.digest
    state = load_file(root / "vae" / "diffusion_pytorch_model.safetensors")
    state["decoder.conv_out.bias"][0] += 1.0
    save_file(state, root / "vae" / "diffusion_pytorch_model.safetensors")
    assert _local(root).digest != source.digest


def test_snapshot_is_a_real_diffusers_pipeline_folder(snapshot_dir):
    pipe = DiffusionPipeline.from_pretrained(snapshot_dir("tiny-sdxl-base"))
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a cat", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 256, 256, 3) and np.isfinite(image).all() and image.std() > 0
    sd15 = DiffusionPipeline.from_pretrained(snapshot_dir("tiny-sd15"))
    assert type(sd15.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    assert sd15.tokenizer.model_max_length == 77


def test_missing_folder_or_layout_is_named(tmp_path, snapshot_copy):
    with pytest.raises(SdbuildError, match="does not exist"):
        _local(tmp_path / "nowhere")
    with pytest.raises(SdbuildError, match="model_index.json is missing") as error:
        _local(tmp_path)
    assert str(tmp_path) in str(error.value)
    root = snapshot_copy()
    (root / "vae" / "config.json").unlink()
    with pytest.raises(SdbuildError, match=r"lacks vae/config.json"):
        _local(root)


def test_a_model_folder_has_no_controlnet_of_its_own(snapshot_dir):
    with pytest.raises(SdbuildError, match="has no ControlNet of its own"):
        load_submodel(_local(snapshot_dir("tiny-sd21-base")), "controlnet")


def test_pickle_weights_are_refused_unless_allowed(snapshot_copy):
    root = snapshot_copy()
    replace_with_pickle(root / "vae")
    with pytest.raises(SdbuildError) as error:
        _local(root)
    assert "vae/diffusion_pytorch_model.bin" in error.value.message
    assert "model.allow_pickle=true" in error.value.hint
    source = _local(root, allow_pickle=True)
    synthetic = resolve_source(ModelConfig("synthetic", architecture="tiny-sd21-base", seed=SEED))
    assert _same_weights(load_submodel(source, "vae"), load_submodel(synthetic, "vae"))


def test_checkpoint_files_are_refused_too(snapshot_copy):
    root = snapshot_copy()
    (root / "unet" / "diffusion_pytorch_model.safetensors").rename(root / "unet" / "model.ckpt")
    with pytest.raises(SdbuildError, match="unet/model.ckpt' is a pickle weights file"):
        _local(root)


def test_truncated_weights_are_named(snapshot_copy):
    root = snapshot_copy()
    weights = root / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(SdbuildError, match="unet/diffusion_pytorch_model.safetensors' is truncated"):
        _local(root)
    weights.write_bytes(b"\x01")
    with pytest.raises(SdbuildError, match="unet/diffusion_pytorch_model.safetensors' is corrupt"):
        _local(root)


def test_malformed_config_is_named(snapshot_copy):
    root = snapshot_copy()
    (root / "text_encoder" / "config.json").write_text('{"hidden_size": 32,')
    with pytest.raises(SdbuildError, match="text_encoder/config.json' is not valid JSON"):
        _local(root)


def test_weights_that_do_not_fit_the_config_are_named(snapshot_copy):
    root = snapshot_copy()
    config_path = root / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["block_out_channels"] = [8, 8, 16, 16]
    config_path.write_text(json.dumps(config))
    source = _local(root)
    with pytest.raises(SdbuildError, match="could not load vae of local/model from .*vae/diffusion_py"):
        load_submodel(source, "vae")
