"""LoRA files fused before tracing (the recipe tiny-lora, end to end): the fused weights are
diffusers' own (`load_lora_weights` + `fuse_lora`) and kohya's formula, the runner's generation
matches diffusers' pipeline with the same LoRAs, and bad LoRAs fail before work in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sdbuild.cli import compose_recipe, main
from sdbuild.errors import SdbuildError
from sdbuild.plan import plan_jobs
from sdbuild.runner.pipeline import GenerationSettings, Pipeline
from sdbuild.sources.additions import load_with_additions
from sdbuild.sources.digest import file_sha256
from sdbuild.sources.load import load_submodel
from sdbuild.sources.synthetic_lora import write_synthetic_lora
from sdbuild.spec import validate
from sdbuild.stages.convert import ConvertStage
from sdbuild.stages.stage import StageContext
from tests.pipeline_parity import PARITY_PSNR_DB, diffusers_image, image_psnr, synthetic_folder
from tests.refusals import refused_build

ARCHITECTURE, SEED = "tiny-sd15", 0
KOHYA_SCALE, PEFT_SCALE = 0.8, 0.5  # as recipes/tiny-lora.yaml
COMPONENTS = "components=[text_encoder,unet,vae_decoder]"  # what a generation needs


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {fmt: write_synthetic_lora(ARCHITECTURE, SEED, fmt, root / f"{fmt}.safetensors") for fmt in ("kohya", "peft")}


def _overrides(lora_files, *extra: str) -> list[str]:
    return ["recipe=tiny-lora", f"loras.0.path={lora_files['kohya']}", f"loras.1.path={lora_files['peft']}", *extra]


@pytest.fixture(scope="module")
def lora_build(lora_files, tmp_path_factory, shared_cache_dir) -> Path:
    out = tmp_path_factory.mktemp("lora-build")
    assert main([*_overrides(lora_files, COMPONENTS), f"output.dir={out}", f"cache.dir={shared_cache_dir}"]) == 0
    (build,) = [p for p in (out / "tiny-lora").iterdir() if not p.name.startswith(".")]
    return build


def _spec(lora_files, *extra: str):
    return validate(compose_recipe(_overrides(lora_files, COMPONENTS, *extra)))


def _diffusers_fuse(pipe, lora_files) -> None:
    """What recipes/tiny-lora.yaml asks for, done by diffusers."""
    pipe.load_lora_weights(str(lora_files["kohya"]), adapter_name="kohya")
    pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=KOHYA_SCALE, adapter_names=["kohya"])
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(lora_files["peft"]), adapter_name="peft")
    pipe.fuse_lora(components=["unet"], lora_scale=PEFT_SCALE, adapter_names=["peft"])
    pipe.unload_lora_weights()


def test_manifest_records_each_lora(lora_build, lora_files):
    manifest = json.loads((lora_build / "manifest.json").read_text())
    assert manifest["additions"] == [
        {"kind": "lora", "sha256": file_sha256(lora_files["kohya"]), "scale": KOHYA_SCALE,
         "components": ["unet", "text_encoder"], "peft": manifest["additions"][0]["peft"]},
        {"kind": "lora", "sha256": file_sha256(lora_files["peft"]), "scale": PEFT_SCALE,
         "components": ["unet"], "peft": manifest["additions"][0]["peft"]},
    ]
    assert set(manifest["components"]) == {"text_encoder", "unet", "vae_decoder"}


@pytest.fixture(scope="module")
def synthetic_weights(tmp_path_factory) -> Path:
    """The build's synthetic weights as a diffusers folder, for diffusers' pipeline."""
    return synthetic_folder(ARCHITECTURE, SEED, tmp_path_factory.mktemp("diffusers"))


def test_generation_matches_diffusers_with_the_same_loras(lora_build, lora_files, synthetic_weights):
    from diffusers import StableDiffusionPipeline

    settings = GenerationSettings(prompt="a photo of an astronaut riding a horse", steps=4, seed=7)
    ours = Pipeline(lora_build, backend="evaluator", progress=lambda text: None).generate(settings)
    with_loras = diffusers_image(StableDiffusionPipeline, synthetic_weights, settings,
                                 prepare=lambda pipe: _diffusers_fuse(pipe, lora_files))
    assert image_psnr(ours, with_loras) >= PARITY_PSNR_DB
    # The LoRAs change the image: without them, diffusers' image is far from ours.
    without = diffusers_image(StableDiffusionPipeline, synthetic_weights, settings)
    assert image_psnr(ours, without) < PARITY_PSNR_DB - 5


@pytest.fixture(scope="module")
def fused(lora_files) -> dict[str, tuple[dict, dict]]:
    """Submodel folder -> (state dict with the recipe's LoRAs fused by sdbuild, without them)."""
    spec = _spec(lora_files)
    return {folder: (load_with_additions(spec.source, folder, spec.additions).state_dict(),
                     load_submodel(spec.source, folder).state_dict()) for folder in ("unet", "text_encoder")}


def test_fused_weights_are_diffusers_fused_weights(fused, lora_files, synthetic_weights):
    from diffusers import StableDiffusionPipeline

    from sdbuild.sources.models import quiet_loading

    with quiet_loading():
        pipe = StableDiffusionPipeline.from_pretrained(synthetic_weights, torch_dtype=torch.float32,
                                                       safety_checker=None)
    _diffusers_fuse(pipe, lora_files)
    for folder, (ours, base) in fused.items():
        theirs = getattr(pipe, folder).state_dict()
        assert ours.keys() == theirs.keys() == base.keys(), "no LoRA layer is left in the module"
        assert any(not torch.equal(ours[key], base[key]) for key in ours)
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=f"{folder} {key}")


def test_fused_layers_follow_each_formats_formula(fused, lora_files):
    """W' = W + sum of scale * alpha / rank * up @ down: kohya's alpha from the file (linear
    layers and 3x3 LoCon convolutions), PEFT's from the adapter metadata (alpha 8, rank 4)."""
    kohya, peft = load_file(lora_files["kohya"]), load_file(lora_files["peft"])

    def delta(up, down, scale, alpha):
        return (up.flatten(1) @ down.flatten(1)) * scale * alpha / down.shape[0]

    for folder, module, kohya_name, in_peft in [
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
         "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", True),
        ("unet", "up_blocks.2.resnets.1.conv1", "lora_unet_up_blocks_2_resnets_1_conv1", True),
        ("text_encoder", "encoder.layers.1.mlp.fc2", "lora_te_text_model_encoder_layers_1_mlp_fc2", False),
    ]:
        ours, base = fused[folder][0][f"{module}.weight"], fused[folder][1][f"{module}.weight"]
        expected = delta(kohya[f"{kohya_name}.lora_up.weight"], kohya[f"{kohya_name}.lora_down.weight"],
                         KOHYA_SCALE, kohya[f"{kohya_name}.alpha"].item())
        if in_peft:  # the PEFT LoRA is fused into the UNet only
            expected = expected + delta(peft[f"unet.{module}.lora_B.weight"], peft[f"unet.{module}.lora_A.weight"],
                                        PEFT_SCALE, 8)
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(ours - base, expected.reshape(base.shape), rtol=0, atol=1e-6)


def test_content_and_scale_change_the_build_id_and_only_affected_keys(lora_files, tmp_path):
    def keys(spec) -> dict[str, str]:
        return {job.component: json.dumps(ConvertStage().key_parts(StageContext(spec, job, step=None)),
                                          sort_keys=True) for job in plan_jobs(spec)}

    base = _spec(lora_files)
    rescaled = _spec(lora_files, "loras.1.scale=0.25")  # the PEFT LoRA changes the UNet only
    edited = tmp_path / "peft.safetensors"
    tensors = load_file(lora_files["peft"])
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] * 2
    save_file(tensors, edited, metadata={"format": "pt"})
    reedited = _spec(lora_files, f"loras.1.path={edited}")
    plain = validate(compose_recipe(["recipe=tiny-lora", COMPONENTS, "loras=[]"]))
    assert len({base.build_id, rescaled.build_id, reedited.build_id, plain.build_id}) == 4
    for changed in (rescaled, reedited):
        before, after = keys(base), keys(changed)
        assert before["unet"] != after["unet"]
        assert before["text_encoder"] == after["text_encoder"] and before["vae_decoder"] == after["vae_decoder"]
    assert keys(plain)["vae_decoder"] == keys(base)["vae_decoder"], "the VAE's key ignores LoRAs"


def test_changed_scale_rebuilds_only_what_it_touches(lora_build, lora_files, shared_cache_dir, tmp_path, capsys):
    """A warm cache: the text encoder (kohya LoRA rescaled) converts again, the VAE decoder does not."""
    capsys.readouterr()
    assert main(["recipe=tiny-lora", "components=[text_encoder,vae_decoder]",
                 f"loras=[{{path: {lora_files['kohya']}, scale: 0.6}}]",
                 f"output.dir={tmp_path}", f"cache.dir={shared_cache_dir}", "verify=false"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert any("vae_decoder" in line and "convert   cached" in line for line in lines)
    assert any("text_encoder" in line and "convert   done" in line for line in lines)


# Bad LoRAs: one line, before any work, nothing written.

def _one_lora(path, *extra: str) -> list[str]:
    return ["recipe=tiny-lora", f"loras=[{{path: {path}}}]", *extra]


def test_missing_truncated_or_foreign_files_fail_in_one_line(lora_files, tmp_path, capsys):
    assert "LoRA file 'nowhere.safetensors' does not exist" in refused_build(_one_lora("nowhere.safetensors"), tmp_path, capsys)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(lora_files["kohya"].read_bytes()[:-100])
    assert "is truncated or corrupt" in refused_build(_one_lora(truncated), tmp_path, capsys)
    text = tmp_path / "notes.txt"
    text.write_text("not a LoRA")
    assert "is not a LoRA file (unknown extension '.txt')" in refused_build(_one_lora(text), tmp_path, capsys)
    pickled = tmp_path / "style.pt"
    torch.save(load_file(lora_files["kohya"]), pickled)
    assert "is a pickle LoRA" in refused_build(_one_lora(pickled), tmp_path, capsys)
    spec = validate(compose_recipe(_one_lora(pickled, COMPONENTS, "model.allow_pickle=true")))
    assert [a.kind for a in spec.additions] == ["lora"]


def test_scale_that_is_not_a_number_fails_in_one_line(lora_files, tmp_path, capsys):
    err = refused_build(_overrides(lora_files, "loras.0.scale=strong"), tmp_path, capsys)
    assert "loras[0].scale: Value 'strong' of type 'str' could not be converted to Float" in err
    err = refused_build(["recipe=tiny-lora", f"loras=[{{path: {lora_files['kohya']}, scale: strong}}]"], tmp_path, capsys)
    assert "loras: scale: Value 'strong' of type 'str' could not be converted to Float" in err


def test_lora_for_another_architecture_names_both(tmp_path, capsys):
    sdxl = write_synthetic_lora("tiny-sdxl-base", SEED, "kohya", tmp_path / "sdxl.safetensors")
    err = refused_build(_one_lora(sdxl), tmp_path, capsys)
    assert f"LoRA '{sdxl}' has text_encoder_2 weights but architecture 'tiny-sd15' has no text_encoder_2" in err
    sd2 = write_synthetic_lora("tiny-sd21-base", SEED, "peft", tmp_path / "sd2.safetensors")
    err = refused_build(_one_lora(sd2), tmp_path, capsys)
    assert f"LoRA '{sd2}' does not fit architecture 'tiny-sd15'" in err and "proj_in" in err
    # Each fits its own architecture.
    validate(compose_recipe(_one_lora(sd2, "model=tiny-sd21-base")))


def test_unmatched_keys_fail_or_warn_with_their_count(lora_files, tmp_path, capsys):
    tensors = load_file(lora_files["kohya"])
    for name in ("lora_unet_down_blocks_7_attentions_0_proj_in", "lora_te_text_model_encoder_layers_9_mlp_fc1"):
        tensors |= {f"{name}.lora_down.weight": torch.zeros(4, 32), f"{name}.lora_up.weight": torch.zeros(32, 4),
                    f"{name}.alpha": torch.tensor(4.0)}
    extra = tmp_path / "extra.safetensors"
    save_file(tensors, extra)
    layers = len({key.split(".")[0] for key in tensors})
    err = refused_build(_one_lora(extra), tmp_path, capsys)
    assert f"2 of {layers} LoRA layers" in err and "match no layer of architecture 'tiny-sd15'" in err
    assert "e.g. 'unet.down_blocks.7.attentions.0.proj_in'" in err and "lora_strict=false" in err
    with pytest.warns(UserWarning, match=f"2 of {layers} LoRA layers .* are skipped"):
        spec = validate(compose_recipe(_one_lora(extra, COMPONENTS, "lora_strict=false")))
    fused = load_with_additions(spec.source, "unet", spec.additions)
    assert not any("lora" in name for name, _ in fused.named_modules())


@pytest.mark.parametrize("components, message", [
    ("[text_encoder_2]", "loras[0].components: architecture 'tiny-sd15' has no text_encoder_2"),
    ("[vae]", "loras[0].components: 'vae' is not a component a LoRA can change"),
])
def test_listed_components_are_checked(lora_files, tmp_path, capsys, components, message):
    err = refused_build(_one_lora(lora_files["kohya"]) + [f"loras.0.components={components}"], tmp_path, capsys)
    assert message in err


def test_component_the_build_does_not_convert_is_an_error(lora_files):
    with pytest.raises(SdbuildError, match=r"loras\[0\].components: text_encoder is not built"):
        validate(compose_recipe(_one_lora(lora_files["kohya"], "components=[unet]",
                                          "loras.0.components=[text_encoder]")))


def test_sdxl_kohya_lora_reaches_the_second_text_encoder(tmp_path):
    """lora_te2_* keys fuse into text_encoder_2 only, when components lists only it."""
    sdxl = write_synthetic_lora("tiny-sdxl-base", SEED, "kohya", tmp_path / "sdxl.safetensors")
    spec = validate(compose_recipe(["model=tiny-sdxl-base", "components=[text_encoder,text_encoder_2,unet]",
                                    f"loras=[{{path: {sdxl}, scale: 0.5, components: [text_encoder_2]}}]"]))
    (addition,) = spec.additions
    assert addition.folders == ("text_encoder_2",)
    module = "text_model.encoder.layers.0.self_attn.v_proj"  # CLIPTextModelWithProjection keeps text_model
    kohya_name = "lora_te2_text_model_encoder_layers_0_self_attn_v_proj"
    tensors = load_file(sdxl)
    base = load_submodel(spec.source, "text_encoder_2").get_submodule(module).weight
    fused = load_with_additions(spec.source, "text_encoder_2", spec.additions).get_submodule(module).weight
    up, down = tensors[f"{kohya_name}.lora_up.weight"], tensors[f"{kohya_name}.lora_down.weight"]
    expected = up @ down * 0.5 * tensors[f"{kohya_name}.alpha"].item() / down.shape[0]
    torch.testing.assert_close(fused - base, expected, rtol=0, atol=1e-6)
    first = load_with_additions(spec.source, "text_encoder", spec.additions).state_dict()
    assert all(torch.equal(v, load_submodel(spec.source, "text_encoder").state_dict()[k]) for k, v in first.items())


def test_synth_lora_command_is_seeded(tmp_path, capsys):
    def written(name: str, seed: int) -> tuple[dict, dict]:
        """(header metadata, tensor bytes): safetensors writes metadata keys in a hash map's
        order, which may differ between two writes, so the bytes of whole files are not compared."""
        out = tmp_path / name
        assert main(["synth-lora", "--architecture", ARCHITECTURE, "--format", "peft", "--seed", str(seed),
                     "--out", str(out)]) == 0
        with safe_open(str(out), framework="pt") as handle:
            return handle.metadata(), {k: handle.get_tensor(k).numpy().tobytes() for k in handle.keys()}

    first = written("a.safetensors", 3)
    assert first == written("b.safetensors", 3) and first[1] != written("c.safetensors", 4)[1]
    assert str(tmp_path / "a.safetensors") in capsys.readouterr().out
    assert main(["synth-lora", "--out", str(tmp_path / "style.bin")]) == 2
    assert "cannot write a LoRA as" in capsys.readouterr().err
