"""ControlNets end to end (recipe tiny-controlnet): a local ControlNet folder and an original-layout
ControlNet file built into one package each, verified, and run by the runner with control images
against diffusers' StableDiffusionControlNetPipeline on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sdbuild.cli import main as build_main
from sdbuild.runner.cli import main as run_main
from sdbuild.runner.pipeline import GenerationSettings, Pipeline
from sdbuild.sources.synthetic_controlnet import write_synthetic_controlnet
from tests.pipeline_parity import PARITY_PSNR_DB, diffusers_image, image_psnr, synthetic_folder

ARCHITECTURE = "tiny-sd15"
FOLDER_SEED, FILE_SEED = 1, 2  # the two ControlNets' weights
KEYS = ("controlnet/canny", "controlnet/file/pose")  # manifest keys, in the recipe's order
SCALES = (1.3, 0.8)
HINT_GAIN = 4.0
STEPS = 3
LATENT = 8


@pytest.fixture(scope="module")
def controlnets(tmp_path_factory) -> tuple[Path, Path]:
    """A ControlNet folder and an original-layout ControlNet file for tiny-sd15."""
    root = tmp_path_factory.mktemp("controlnets")
    folder = write_synthetic_controlnet(ARCHITECTURE, FOLDER_SEED, root / "canny")
    # Seeded weights at torch's default scale shrink the image ~6-fold in variance through each of
    # the hint encoder's 8 convolutions, so it barely reaches the residuals (another image: 77 dB
    # from the first in diffusers); a gain keeps the image's effect visible (26 dB).
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({k: v * HINT_GAIN if k.startswith("controlnet_cond_embedding.") and k.endswith(".weight") else v
               for k, v in state.items()}, weights)
    return folder, write_synthetic_controlnet(ARCHITECTURE, FILE_SEED, root / "pose.safetensors")


def _entries(folder: Path, file: Path) -> str:
    return f"controlnet=[{{source:local,path:'{folder}',id:canny}},{{source:file,path:'{file}'}}]"


@pytest.fixture(scope="module")
def build(controlnets, tmp_path_factory, shared_cache_dir) -> Path:
    out = tmp_path_factory.mktemp("controlnet-build")
    # 64 px images: the evaluator runs every package at a quarter of the default's cost.
    assert build_main(["recipe=tiny-controlnet", _entries(*controlnets), f"latent.height={LATENT}",
                       f"latent.width={LATENT}", f"output.dir={out}", f"cache.dir={shared_cache_dir}"]) == 0
    (build,) = [p for p in (out / "tiny-controlnet").iterdir() if not p.name.startswith(".")]
    return build


@pytest.fixture(scope="module")
def control_images(tmp_path_factory) -> tuple[Path, Path]:
    """Two control images of another size than the output (the runner resizes them), and a third."""
    root = tmp_path_factory.mktemp("control-images")
    rng = np.random.default_rng(5)
    paths = []
    for index in range(3):
        pixels = np.zeros((96, 80, 3), dtype=np.uint8)
        pixels[rng.integers(0, 96, 40), :, index % 3] = 255  # edge-like lines
        pixels[:, rng.integers(0, 80, 30), (index + 1) % 3] = 255
        paths.append(root / f"control-{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    return tuple(paths)


def test_each_controlnet_is_its_own_verified_package(build):
    manifest = json.loads((build / "manifest.json").read_text())
    components = manifest["components"]
    assert sorted(components) == sorted(["text_encoder", "control-unet", *KEYS, "vae_decoder"])
    assert components[KEYS[0]]["file"] == "ControlNet_canny.mlpackage"
    assert components[KEYS[1]]["file"] == "ControlNet_file_pose.mlpackage"
    for key in KEYS:
        verification = components[key]["verification"]
        assert verification["verified"] and verification["threshold_db"] == 35.0
        assert len(verification["outputs"]) == 13  # 12 down-block residuals and the mid block's
        assert min(o["psnr_db"] for o in verification["outputs"]) >= verification["threshold_db"]
    assert components[KEYS[0]]["sha256"] != components[KEYS[1]]["sha256"]
    additions = manifest["additions"]
    assert [(a["kind"], a["source"], a["model_id"]) for a in additions] == [
        ("controlnet", "local", "canny"), ("controlnet", "file", "file/pose")]
    assert all(len(a["digest"]) == 64 for a in additions)


def test_generation_matches_the_diffusers_controlnet_pipeline(build, control_images, tmp_path):
    from diffusers import ControlNetModel, MultiControlNetModel, StableDiffusionControlNetPipeline

    from sdbuild.sources.synthetic import resolve_synthetic
    from sdbuild.sources.synthetic_weights import build_synthetic_submodel

    pipeline = Pipeline(build, backend="evaluator", progress=lambda text: None)
    images = tuple(str(p) for p in control_images[:2])
    settings = GenerationSettings(prompt="a house by a lake", steps=STEPS, seed=3, control_images=images,
                                  control_scales=SCALES)
    folder = synthetic_folder(ARCHITECTURE, pipeline.manifest.recipe.config["model"]["seed"], tmp_path)
    controlnets = MultiControlNetModel([
        ControlNetModel.from_pretrained(pipeline.manifest.recipe.config["controlnet"][0]["path"]),
        build_synthetic_submodel(resolve_synthetic(ARCHITECTURE, FILE_SEED), "controlnet"),
    ])
    reference = diffusers_image(
        StableDiffusionControlNetPipeline, folder, settings, components={"controlnet": controlnets},
        image=[Image.open(p) for p in images], controlnet_conditioning_scale=list(SCALES), height=8 * LATENT,
        width=8 * LATENT)
    ours = pipeline.generate(settings)
    assert image_psnr(ours, reference) >= PARITY_PSNR_DB

    # The control images steer it: another image for the first ControlNet gives another picture
    # (through the CLI, which writes it).
    out = tmp_path / "other.png"
    assert run_main(["--build", str(build), "--prompt", settings.prompt, "--steps", str(STEPS), "--seed", "3",
                     "--control-image", str(control_images[2]), "--control-image", images[1],
                     *(arg for scale in SCALES for arg in ("--control-scale", str(scale))),
                     "--output", str(out), "--quiet"]) == 0
    other = np.asarray(Image.open(out))
    assert image_psnr(other, reference) < PARITY_PSNR_DB
    assert json.loads(out.with_suffix(".json").read_text())["control_images"] == [str(control_images[2]), images[1]]


@pytest.mark.parametrize(("arguments", "message"), [
    ([], "needs ControlNet residuals, and no --control-image was given"),
    (["--control-image", "{image}"], "1 --control-image for 2 ControlNets (controlnet/canny, controlnet/file/pose)"),
    (["--control-image", "{image}", "--control-image", "{image}", "--control-scale", "nan"],
     "--control-scale nan is not one finite number, or one per ControlNet"),
    (["--control-image", "{bad}", "--control-image", "{image}"], "is not a readable image"),
])
def test_bad_control_arguments_fail_in_one_line_before_loading(build, control_images, tmp_path, capsys,
                                                               arguments, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture")
    arguments = [a.format(image=control_images[0], bad=bad) for a in arguments]
    out = tmp_path / "x.png"
    assert run_main(["--build", str(build), "--prompt", "x", "--steps", "1", "--output", str(out), *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert "loading" not in err and not out.exists()


def test_control_image_on_a_build_without_controlnet_fails_in_one_line(tiny_build, control_images, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert run_main(["--build", str(tiny_build), "--prompt", "x", "--steps", "1", "--output", str(out),
                     "--control-image", str(control_images[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--control-image was given but this build has no ControlNet" in err
    assert not out.exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (["components=[text_encoder,unet,vae_decoder]"],
     "the recipe has controlnet entries but components lack control-unet and controlnet"),
    (["controlnet=[]"], "components list control-unet and controlnet but the recipe has no controlnet entry"),
    (["controlnet.0.source=file", "controlnet.0.path={model}"], "is not a ControlNet checkpoint"),
])
def test_bad_recipes_fail_in_one_line_writing_nothing(tmp_path, capsys, overrides, message):
    model = tmp_path / "inputs" / "model.safetensors"  # a file that holds no ControlNet
    model.parent.mkdir()
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, model)
    out, cache = tmp_path / "out", tmp_path / "cache"
    overrides = [o.format(model=model) for o in overrides]
    assert build_main(["recipe=tiny-controlnet", f"output.dir={out}", f"cache.dir={cache}", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() and not [p for p in cache.rglob("*") if p.is_file()], "nothing written"
