"""Synthetic sources: seeded, deterministic, one submodel at a time, real architectures."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
import torch
from sources_helpers import SEED, ModelConfig
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from sdbuild.errors import SdbuildError
from sdbuild.sources import SYNTHETIC_SCHEME_VERSION, load_submodel, resolve_source
from sdbuild.sources.digest import json_digest

ARCH = "tiny-sd21-base"

# Per seed: the digest, a hash of every tensor of each named submodel, and of the tokenizer files.
_FINGERPRINT = """
import hashlib, json, sys, tempfile
from pathlib import Path
from types import SimpleNamespace
from sdbuild.sources import load_submodel, resolve_source, write_tokenizer_files
arch, seeds, folders = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
prints = {}
for seed in seeds:
    source = resolve_source(SimpleNamespace(source="synthetic", architecture=arch, seed=int(seed)))
    prints[seed] = {"digest": source.digest}
    for folder in folders:
        sha = hashlib.sha256()
        for name, tensor in sorted(load_submodel(source, folder).state_dict().items()):
            sha.update(name.encode()); sha.update(tensor.contiguous().numpy().tobytes())
        prints[seed][folder] = sha.hexdigest()
    with tempfile.TemporaryDirectory() as out:
        for path in write_tokenizer_files(source, Path(out)):
            prints[seed][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
print(json.dumps(prints))
"""
FOLDERS = ["unet", "text_encoder", "vae", "controlnet"]


def test_weights_and_tokenizer_are_bitwise_identical_across_processes():
    seeds = [str(SEED), str(SEED + 1)]
    args = [sys.executable, "-c", _FINGERPRINT, ARCH, ",".join(seeds), ",".join(FOLDERS)]
    runs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out in outputs)
    assert first == second
    one, other = first[seeds[0]], first[seeds[1]]
    assert set(one) == {"digest", *FOLDERS, "vocab.json", "merges.txt"}
    assert len({one[f] for f in FOLDERS}) == len(FOLDERS)  # submodels get different weights
    assert all(one[f] != other[f] for f in ["digest", *FOLDERS])
    assert one["vocab.json"] == other["vocab.json"]  # the vocabulary does not depend on the seed


def test_digest_covers_configs_seed_and_scheme():
    source = resolve_source(ModelConfig("synthetic", architecture=ARCH))
    expected = json_digest({"configs": source.configs, "seed": SEED, "scheme": SYNTHETIC_SCHEME_VERSION})
    assert source.digest == expected
    assert resolve_source(ModelConfig("synthetic", architecture=ARCH)).digest == expected
    assert resolve_source(ModelConfig("synthetic", architecture="tiny-sd21")).digest != expected
    assert source.kind == "synthetic" and source.model_id == f"synthetic/{ARCH}"
    assert source.root is None and source.revision is None and source.seed == SEED


def test_identity_is_json_and_leaves_out_configs_and_root():
    source = resolve_source(ModelConfig("synthetic", architecture="tiny-sdxl-base"))
    identity = source.identity()
    assert json.loads(json.dumps(identity)) == identity
    assert set(identity) == {"kind", "model_id", "revision", "digest", "seed", "arch"}
    assert identity["arch"]["family"] == "sdxl"
    assert identity["arch"]["components"] == ["scheduler", "text_encoder", "text_encoder_2", "unet", "vae"]


def test_models_are_float32_eval_and_produce_varied_finite_outputs():
    source = resolve_source(ModelConfig("synthetic", architecture=ARCH))
    unet = load_submodel(source, "unet")
    assert not unet.training
    assert {p.dtype for p in unet.parameters()} == {torch.float32}
    assert not any(p.is_meta for p in unet.parameters())
    assert list(unet.config.block_out_channels) == source.configs["unet"]["block_out_channels"]
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 77, source.arch.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        noise = unet(sample, torch.tensor([10.0]), context).sample
        residuals = load_submodel(source, "controlnet")(
            sample, torch.tensor([10.0]), context, controlnet_cond=torch.rand(1, 3, 128, 128)
        )
    assert noise.shape == sample.shape and torch.isfinite(noise).all() and noise.std() > 1e-3
    # A library-initialised ControlNet has zero output convolutions; ours must not.
    outputs = [*residuals.down_block_res_samples, residuals.mid_block_res_sample]
    assert [tuple(t.shape[1:]) for t in outputs] == [
        (c, 16 // s, 16 // s) for c, s in source.arch.control_residual_layout
    ]
    assert all(t.abs().max() > 1e-4 for t in outputs)


def test_text_encoder_keeps_its_position_ids_buffer():
    source = resolve_source(ModelConfig("synthetic", architecture="tiny-sdxl-base"))
    encoder = load_submodel(source, "text_encoder_2")
    assert isinstance(encoder, CLIPTextModelWithProjection)
    assert torch.equal(encoder.text_model.embeddings.position_ids, torch.arange(77)[None])


_CLASSES = (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTextModelWithProjection,
            StableDiffusionSafetyChecker, ControlNetModel)


@pytest.fixture
def constructed(monkeypatch) -> list[str]:
    """Names of the submodel classes instantiated during the test."""
    names: list[str] = []
    for cls in _CLASSES:
        init = cls.__init__

        @functools.wraps(init)  # keeps the signature, which config handling inspects
        def spy(self, *args, _init=init, **kwargs):
            names.append(type(self).__name__)
            _init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", spy)
    return names


@pytest.mark.parametrize(("folder", "cls"), [
    ("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel),
    ("safety_checker", StableDiffusionSafetyChecker), ("controlnet", ControlNetModel),
])
def test_loading_one_submodel_constructs_no_other(constructed, folder, cls):
    source = resolve_source(ModelConfig("synthetic", architecture="tiny-sd15"))
    assert constructed == []  # resolving builds nothing
    model = load_submodel(source, folder)
    assert isinstance(model, cls)
    assert constructed == [cls.__name__]
    assert sum(p.numel() for p in model.parameters()) < 5_000_000  # the tiny config, not defaults


def test_unknown_architecture_and_folder_are_clear_errors():
    with pytest.raises(SdbuildError, match="unknown architecture 'tiny-sd99'"):
        resolve_source(ModelConfig("synthetic", architecture="tiny-sd99"))
    source = resolve_source(ModelConfig("synthetic", architecture=ARCH))
    with pytest.raises(SdbuildError, match="no submodel 'safety_checker'") as error:
        load_submodel(source, "safety_checker")
    assert "controlnet" in error.value.hint
