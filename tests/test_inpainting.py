"""Inpainting end to end on tiny models: the 9-channel UNet builds and verifies, the
runner's --init-image + --mask generation matches diffusers' StableDiffusionInpaintPipeline on the
same weights, the mask steers the picture, and bad requests fail in one line before work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdbuild.cli import main as build_main
from sdbuild.errors import SdbuildError
from sdbuild.runner import pipeline as runner_pipeline
from sdbuild.runner.cli import main as run_main
from sdbuild.runner.pipeline import GenerationSettings, Pipeline
from sdbuild.sources.resolved import arch_from_configs
from sdbuild.sources.synthetic import synthetic_configs
from sdbuild.sources.synthetic_file import write_synthetic_single_file
from tests.pipeline_parity import PARITY_PSNR_DB, diffusers_image, image_psnr, synthetic_folder

ARCHITECTURE, SEED = "tiny-sd15-inpainting", 0
SIZE = 128  # the tiny model's image size (16 latents x 8)


@pytest.fixture(scope="module")
def inpainting_build(tmp_path_factory, shared_cache_dir):
    """The recipe tiny-inpainting, built once."""
    root = tmp_path_factory.mktemp("tiny-inpainting")
    assert build_main(["recipe=tiny-inpainting", f"output.dir={root}", f"cache.dir={shared_cache_dir}"]) == 0
    (build,) = [p for p in (root / "tiny-inpainting").iterdir() if not p.name.startswith(".")]
    return build


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A picture (red left half, seeded noise right half) and masks of its size: a centre
    square, the right half, and one of another size."""
    root = tmp_path_factory.mktemp("inpainting-pictures")
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    picture[:, : SIZE // 2] = [200, 40, 40]
    Image.fromarray(picture).save(root / "picture.png")
    square = np.zeros((SIZE, SIZE), np.uint8)
    square[SIZE // 4: 3 * SIZE // 4, SIZE // 4: 3 * SIZE // 4] = 255
    right = np.zeros((SIZE, SIZE), np.uint8)
    right[:, SIZE // 2:] = 255
    for name, mask in (("square", square), ("right", right), ("small", square[::2, ::2])):
        Image.fromarray(mask).save(root / f"{name}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def settings_for(pictures, mask: str, **options) -> GenerationSettings:
    return GenerationSettings(prompt="a red door", steps=2, seed=7, init_image=str(pictures / "picture.png"),
                              mask=str(pictures / f"{mask}.png"), strength=1.0, **options)


@pytest.fixture(scope="module")
def generations(inpainting_build, pictures):
    """The runner's pictures with the square mask and with the right-half mask."""
    pipeline = Pipeline(inpainting_build, backend="evaluator", progress=lambda text: None)
    return {mask: pipeline.generate(settings_for(pictures, mask)) for mask in ("square", "right")}


def test_the_inpainting_unet_keeps_the_contract_and_verifies(inpainting_build):
    manifest = json.loads((inpainting_build / "manifest.json").read_text())
    unet = manifest["components"]["unet"]
    shapes = {t["name"]: t["shape"] for t in unet["interface"]["inputs"] + unet["interface"]["outputs"]}
    assert shapes["sample"] == [2, 9, 16, 16] and shapes["noise_pred"] == [2, 4, 16, 16]
    check = unet["verification"]
    assert check["verified"] and all(o["psnr_db"] >= check["threshold_db"] for o in check["outputs"])
    assert manifest["source"]["architecture"] == ARCHITECTURE


def test_generation_matches_the_diffusers_inpaint_pipeline_on_the_same_weights(
        inpainting_build, pictures, generations, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline

    folder = synthetic_folder(ARCHITECTURE, SEED, tmp_path)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionInpaintPipeline"
    settings = settings_for(pictures, "square")
    reference = diffusers_image(StableDiffusionInpaintPipeline, folder, settings, strength=settings.strength,
                                image=Image.open(settings.init_image), mask_image=Image.open(settings.mask))
    ours = image_psnr(generations["square"], reference)
    assert ours >= PARITY_PSNR_DB
    # The yardstick sees the mask: the other mask's picture is far from it.
    assert image_psnr(generations["right"], reference) < ours - 10


def test_another_mask_repaints_another_part(pictures, generations):
    change = np.abs(generations["square"].astype(np.float32) - generations["right"].astype(np.float32)).mean(-1)
    square = np.asarray(Image.open(pictures / "square.png")) > 127
    right = np.asarray(Image.open(pictures / "right.png")) > 127
    # Where only one of the masks repaints, the pictures differ more than where both keep the
    # picture. (The tiny model's random weights do not keep the unmasked part as a trained one
    # does, so that is the locality it shows.)
    assert change[square ^ right].mean() > 1.5 * change[~square & ~right].mean()


@pytest.mark.parametrize("arguments, message", [
    (["--init-image", "picture.png", "--mask", "small.png"],
     "--mask {dir}/small.png is 64x64 but --init-image is 128x128 (give a mask of the picture's size"),
    (["--init-image", "picture.png", "--mask", "broken.png"], "--mask {dir}/broken.png is not a readable image"),
    (["--mask", "square.png"], "--mask needs --init-image"),
    ([], "this build's UNet is an inpainting UNet: it needs --init-image and --mask"),
    (["--init-image", "picture.png"], "this build's UNet is an inpainting UNet: it needs --init-image and --mask"),
])
def test_bad_requests_fail_in_one_line_before_any_model_loads(
        inpainting_build, pictures, arguments, message, monkeypatch, capsys, tmp_path):
    _refuse_model_loading(monkeypatch)
    arguments = [str(pictures / a) if a.endswith(".png") else a for a in arguments]
    assert run_main(["--build", str(inpainting_build), "--prompt", "x", "--output", str(tmp_path / "x.png"),
                     *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.format(dir=pictures) in err, err
    assert not list(tmp_path.iterdir()), "nothing written"


def test_a_mask_on_a_text_to_image_build_is_refused(tiny_build, pictures, monkeypatch):
    _refuse_model_loading(monkeypatch)
    pipeline = Pipeline(tiny_build, backend="evaluator", progress=lambda text: None)
    with pytest.raises(SdbuildError, match="--mask needs an inpainting build"):
        pipeline.generate(settings_for(pictures, "square"))


def _refuse_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the request was checked")

    monkeypatch.setattr(runner_pipeline, "load_predictor", refuse)


def test_a_unet_of_another_input_width_is_refused():
    configs = synthetic_configs("tiny-sd15")
    configs["unet"] = {**configs["unet"], "in_channels": 5}
    with pytest.raises(SdbuildError) as error:
        arch_from_configs("tiny-sd15", configs, "folder X")
    assert "the UNet in folder X takes 5 input channels: neither the 4 latent channels nor the 9" in str(error.value)


def test_controlnet_with_an_inpainting_unet_is_refused(tmp_path, capsys):
    assert build_main(["recipe=tiny-inpainting", "components=[text_encoder,control-unet,controlnet]",
                       f"output.dir={tmp_path / 'out'}", f"cache.dir={tmp_path / 'cache'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has an inpainting UNet" in err and "control-unet or controlnet" in err
    assert not (tmp_path / "out").exists()


def test_single_file_inpainting_checkpoints_need_an_inpainting_architecture(tmp_path, capsys):
    inpainting = write_synthetic_single_file(ARCHITECTURE, SEED, tmp_path / "inpainting.safetensors")
    text_to_image = write_synthetic_single_file("tiny-sd15", SEED, tmp_path / "plain.safetensors")
    for checkpoint, architecture, message in (
        (inpainting, "tiny-sd15", "is an SD 1.x inpainting (9 UNet input channels) checkpoint but "
                                  "model.architecture=tiny-sd15 is text-to-image (4 UNet input channels)"),
        (text_to_image, ARCHITECTURE, "is an SD 1.x text-to-image (4 UNet input channels) checkpoint but "
                                      f"model.architecture={ARCHITECTURE} is inpainting (9 UNet input channels)"),
    ):
        assert build_main(["validate", "recipe=tiny-single-file", f"model.path={checkpoint}",
                           f"model.architecture={architecture}", f"cache.dir={tmp_path / 'cache'}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    # The matching architecture converts the file to a folder of the synthetic model's weights.
    assert build_main(["validate", "recipe=tiny-single-file", f"model.path={inpainting}",
                       f"model.architecture={ARCHITECTURE}", f"cache.dir={tmp_path / 'cache'}"]) == 0
    from safetensors.torch import load_file

    from sdbuild.sources.synthetic import resolve_synthetic
    from sdbuild.sources.synthetic_weights import build_synthetic_submodel

    (converted,) = (tmp_path / "cache" / "sources").glob("file-*/unet/diffusion_pytorch_model.safetensors")
    expected = build_synthetic_submodel(resolve_synthetic(ARCHITECTURE, SEED), "unet").state_dict()
    weights = load_file(converted)
    assert weights["conv_in.weight"].shape[1] == 9
    assert weights.keys() == expected.keys() and all(weights[k].equal(expected[k]) for k in expected)
