"""The SDXL refiner end to end on tiny models: the tiny-sdxl-refiner recipe builds and verifies its
`refiner` UNet and text_encoder_2 with the contract's interfaces, the runner refines a picture as
diffusers' StableDiffusionXLImg2ImgPipeline does on the same weights, and a tiny SDXL base build
hands its latents over to it as diffusers' denoising_end / denoising_start pair does."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sdbuild.bundle import resource_plan
from sdbuild.cli import main as build_main
from sdbuild.errors import SdbuildError
from sdbuild.manifest import read_manifest
from sdbuild.runner.cli import main as run_main
from sdbuild.runner.pipeline import GenerationSettings, Pipeline
from sdbuild.runner.refiner import check_hand_off, generate_refined
from tests.test_build_tiny import package_interface
from tests.pipeline_parity import PARITY_PSNR_DB, diffusers_image, diffusers_output, image_psnr, synthetic_folder

SEED = 0  # the recipes' synthetic seed
PROMPT = "a photo of an astronaut riding a horse"
# Half the native latent size: a quarter of the evaluator's work per step, images of 128 px.
LATENT = ["latent.height=16", "latent.width=16"]


def _build(tmp_path_factory, cache, *overrides) -> object:
    root = tmp_path_factory.mktemp("refiner-builds")
    assert build_main([*overrides, *LATENT, f"output.dir={root}", f"cache.dir={cache}"]) == 0
    (build,) = [p for p in root.glob("*/*") if not p.name.startswith(".")]
    return build


@pytest.fixture(scope="module")
def refiner_build(tmp_path_factory, shared_cache_dir):
    return _build(tmp_path_factory, shared_cache_dir, "recipe=tiny-sdxl-refiner")


@pytest.fixture(scope="module")
def base_build(tmp_path_factory, shared_cache_dir):
    """What the hand-off needs of a tiny SDXL base: its text encoders and UNet (verified elsewhere)."""
    return _build(tmp_path_factory, shared_cache_dir, "model=tiny-sdxl-base",
                  "components=[text_encoder,text_encoder_2,unet]", "verify=false")


@pytest.fixture(scope="module")
def refiner(refiner_build):
    return Pipeline(refiner_build, backend="evaluator", progress=lambda text: None)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A smooth seeded picture at the builds' image size (128 px: no resizing on either side)."""
    rng = np.random.default_rng(3)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    path = tmp_path_factory.mktemp("refiner-input") / "in.png"
    coarse.resize((128, 128), Image.Resampling.BICUBIC).save(path)
    return path


def test_refiner_build_keeps_the_contract_and_verifies(refiner_build):
    manifest = read_manifest(refiner_build)
    assert manifest.source.family == "sdxl" and manifest.source.architecture == "tiny-sdxl-refiner"
    assert sorted(manifest.components) == ["refiner", "text_encoder_2", "vae_decoder", "vae_encoder"]
    unet = manifest.components["refiner"]
    assert unet.file == "Stable_Diffusion_version_synthetic_tiny-sdxl-refiner_refiner.mlpackage"
    shapes = {t.name: t.shape for t in unet.interface.inputs}
    # Text states from text_encoder_2 alone (32 wide here, 1280 in the real refiner); five time
    # ids: original size, crop top-left, aesthetic score.
    assert shapes == {"sample": [2, 4, 16, 16], "timestep": [2], "encoder_hidden_states": [2, 32, 1, 77],
                      "time_ids": [2, 5], "text_embeds": [2, 32]}
    for component in ("refiner", "text_encoder_2"):
        verification = manifest.components[component].verification
        assert verification.verified and verification.threshold_db == 35.0
        assert all(o.psnr_db >= 35.0 for o in verification.outputs), verification.outputs
    assert package_interface(refiner_build / unet.file) == unet.interface.model_dump()
    assert manifest.components["vae_decoder"].precision == "float32", "the SDXL VAE stays float32"
    assert ("Stable_Diffusion_version_synthetic_tiny-sdxl-refiner_refiner.mlpackage", "UnetRefiner") in \
        resource_plan(manifest)


def test_image_to_image_matches_diffusers_and_uses_the_aesthetic_scores(refiner, picture, tmp_path):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    settings = GenerationSettings(prompt=PROMPT, steps=4, seed=7, init_image=str(picture), strength=0.5)
    folder = synthetic_folder("tiny-sdxl-refiner", SEED, tmp_path)
    reference = diffusers_image(StableDiffusionXLImg2ImgPipeline, folder, settings,
                                image=Image.open(picture).convert("RGB"), strength=settings.strength)
    ours = refiner.generate(settings)
    matched = image_psnr(ours, reference)
    assert matched >= PARITY_PSNR_DB
    # Were either score ignored, the image would not move with it: each one moves it far further
    # than the two implementations differ.
    for score in ("aesthetic_score", "negative_aesthetic_score"):
        moved = refiner.generate(dataclasses.replace(settings, **{score: 0.0}))
        assert image_psnr(moved, reference) < matched - 10, score


def test_base_hands_its_latents_to_the_refiner_as_diffusers_does(base_build, refiner_build, refiner, tmp_path):
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base = Pipeline(base_build, backend="evaluator", progress=lambda text: None)
    # The runner encodes the negative prompt even when empty; diffusers' SDXL base does too when
    # it is given (with none, it would use zeros).
    settings = GenerationSettings(prompt=PROMPT, steps=5, seed=5, refiner=str(refiner_build), refine_from=0.6)
    check_hand_off(base, refiner, settings.refiner)
    ours = generate_refined(base, refiner, settings)

    latents = diffusers_output(StableDiffusionXLPipeline, synthetic_folder("tiny-sdxl-base", SEED, tmp_path), settings,
                               height=128, width=128, denoising_end=settings.refine_from, output_type="latent")
    reference = diffusers_image(StableDiffusionXLImg2ImgPipeline, synthetic_folder("tiny-sdxl-refiner", SEED, tmp_path),
                                settings, image=latents, denoising_start=settings.refine_from)
    matched = image_psnr(ours, reference)
    assert matched >= PARITY_PSNR_DB
    # The yardstick can fail: the handed-over latents decoded without the refiner's steps are far
    # further from it than the two implementations are from each other.
    assert image_psnr(refiner.finish(latents), reference) < matched - 10


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("flags, message", [
    (["--refine-from", "1.0"], "--refine-from 1.0 is outside (0, 1)"),
    (["--refine-from", "nan"], "--refine-from nan is not a finite number"),
    (["--aesthetic-score", "inf"], "--aesthetic-score inf is not a finite number"),
])
def test_bad_refiner_settings_fail_in_one_line_before_any_build_is_read(flags, message, tmp_path, capsys):
    out = tmp_path / "x.png"
    code = run_main(["--build", str(tmp_path / "nothing"), "--refiner", str(tmp_path / "nothing"),
                     "--prompt", "x", "--output", str(out), *flags])
    assert code == 2 and message in _one_line_error(capsys)
    assert not any(tmp_path.iterdir()), "nothing written"


def test_builds_that_do_not_fit_are_refused_in_one_line(base_build, refiner_build, tmp_path, capsys):
    out = tmp_path / "x.png"
    for base, refiner, message in (
        (base_build, base_build, f"--refiner {base_build} is a build of tiny-sdxl-base, not of an SDXL refiner"),
        (refiner_build, refiner_build, "--refiner needs an SDXL base build to start from, not tiny-sdxl-refiner"),
    ):
        code = run_main(["--build", str(base), "--refiner", str(refiner), "--prompt", "x", "--output", str(out)])
        assert code == 2 and message in _one_line_error(capsys)
    assert not out.exists()


def test_hand_off_checks_read_the_manifests_only(base_build, refiner_build, tmp_path):
    base = Pipeline(base_build, backend="evaluator")
    # Another latent size: the manifest is not among the files it hashes, so edit a copy's.
    other = tmp_path / refiner_build.name
    shutil.copytree(refiner_build, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["latent_size"] = [32, 32]
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SdbuildError, match="base build's latents are 16x16 but the refiner build takes 32x32"):
        check_hand_off(base, Pipeline(other, backend="evaluator"), str(other))
    assert not base._models, "no model was loaded"


def test_the_real_refiner_configs_give_the_refiner_contract():
    from sdbuild.contract import component_interface
    from sdbuild.sources.resolved import arch_from_configs
    from sdbuild.sources.synthetic import synthetic_configs

    arch = arch_from_configs("sdxl-refiner", synthetic_configs("sdxl-refiner"), "sdxl-refiner")
    assert arch.refiner and arch.family == "sdxl" and arch.text_hidden_sizes == (1280,)
    assert [c for c in ("text_encoder", "text_encoder_2", "unet", "refiner", "vae_decoder") if arch.supports(c)] == \
        ["text_encoder_2", "refiner", "vae_decoder"]
    shapes = {t.name: t.shape for t in component_interface("refiner", arch, (128, 128), 2).inputs}
    assert shapes["encoder_hidden_states"] == (2, 1280, 1, 77)
    assert shapes["time_ids"] == (2, 5) and shapes["text_embeds"] == (2, 1280)
    base = arch_from_configs("sdxl-base", synthetic_configs("sdxl-base"), "sdxl-base")
    assert not base.refiner and not base.supports("refiner") and base.time_id_count == 6
    # A refiner UNet beside a first text encoder is no model anyone publishes: refused.
    with pytest.raises(SdbuildError, match="conditions on text_encoder_2 alone"):
        configs = {**synthetic_configs("sdxl-refiner"), "text_encoder": synthetic_configs("sdxl-base")["text_encoder"]}
        arch_from_configs("x", configs, "x")


@pytest.mark.parametrize("overrides, message", [
    (["recipe=tiny-sdxl-refiner", "components=[text_encoder_2,unet]"],
     "architecture 'tiny-sdxl-refiner' has no component unet (components for it: text_encoder_2, refiner, "
     "vae_decoder, vae_encoder)"),
    (["model=tiny-sdxl-base", "components=[text_encoder,refiner]"],
     "architecture 'tiny-sdxl-base' has no component refiner"),
])
def test_the_refiner_component_belongs_to_refiner_architectures_only(overrides, message, tmp_path, capsys):
    assert build_main([*overrides, f"output.dir={tmp_path / 'out'}", f"cache.dir={tmp_path / 'cache'}"]) == 2
    assert message in _one_line_error(capsys)
    assert not any(tmp_path.iterdir()), "nothing written"
