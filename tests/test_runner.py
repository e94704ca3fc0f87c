"""The thin runner generates images from a manifest alone, and refuses damaged builds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sdbuild.errors import SdbuildError
from sdbuild.runner.cli import latest_build, main
from sdbuild.runner.pipeline import SCHEDULERS, GenerationSettings, Pipeline
from tests.pipeline_parity import PARITY_PSNR_DB, diffusers_image, image_psnr, synthetic_folder


@pytest.fixture(scope="module")
def pipeline(tiny_build):
    return Pipeline(tiny_build, backend="evaluator", progress=lambda text: None)


def test_run_writes_png_and_settings(tiny_build, tmp_path, capsys):
    out = tmp_path / "astronaut.png"
    code = main(["--build", str(tiny_build), "--prompt", "a photo of an astronaut riding a horse",
                 "--steps", "3", "--output", str(out)])
    assert code == 0
    image = Image.open(out)
    assert image.size == (128, 128) and image.mode == "RGB"
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["prompt"] == "a photo of an astronaut riding a horse"
    assert settings["steps"] == 3 and settings["seed"] == 93 and settings["backend"] == "evaluator"
    assert settings["build_id"] == tiny_build.name
    assert "step 3/3" in capsys.readouterr().err


def test_quiet_run_prints_no_steps(tiny_build, tmp_path, capsys):
    out = tmp_path / "quiet.png"
    assert main(["--build", str(tiny_build), "--prompt", "x", "--steps", "1", "--output", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert out.is_file() and "step" not in captured.err
    assert captured.out.startswith(f"wrote {out}")


def test_prompt_tokenizes_with_the_builds_vocabulary(pipeline):
    ids = pipeline.token_ids("a photo of an astronaut riding a horse")[0].astype(int).tolist()
    assert ids[0] == 49406, "starts with <|startoftext|>"
    words = ids[1:ids.index(49407)]
    assert len(words) == 8 and len(set(words)) == 7, words  # one token per word; "a" twice
    assert all(i < 49406 for i in words)
    assert ids[-1] == 49407 and len(ids) == 77


def test_same_seed_same_image_other_seed_other_image(pipeline):
    settings = GenerationSettings(prompt="a red house", steps=2, scheduler="EulerDiscrete")
    first, again = pipeline.generate(settings), pipeline.generate(settings)
    other = pipeline.generate(GenerationSettings(prompt="a red house", steps=2, scheduler="EulerDiscrete", seed=7))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_generation_matches_the_diffusers_pipeline_on_the_same_weights(pipeline, tmp_path):
    from diffusers import StableDiffusionPipeline

    settings = GenerationSettings(prompt="a photo of an astronaut riding a horse", steps=4, seed=7)
    source = pipeline.manifest.source
    folder = synthetic_folder(source.architecture, pipeline.manifest.recipe.config["model"]["seed"], tmp_path)
    reference = diffusers_image(StableDiffusionPipeline, folder, settings)
    ours = pipeline.generate(settings)
    assert image_psnr(ours, reference) >= PARITY_PSNR_DB
    # The yardstick can fail: another seed's image is far from it.
    other = pipeline.generate(GenerationSettings(prompt=settings.prompt, steps=4, seed=8))
    assert image_psnr(other, reference) < PARITY_PSNR_DB


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_runs(pipeline, scheduler):
    image = pipeline.generate(GenerationSettings(prompt="a cat", steps=2, scheduler=scheduler))
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8


def test_image_to_image_uses_the_encoder(pipeline, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.full((128, 128, 3), 200, dtype=np.uint8)).save(source)
    low = pipeline.generate(GenerationSettings(prompt="a cat", steps=4, init_image=str(source), strength=0.25))
    high = pipeline.generate(GenerationSettings(prompt="a cat", steps=4, init_image=str(source), strength=1.0))
    assert low.shape == (128, 128, 3)
    assert not np.array_equal(low, high)


def test_tampered_artifact_is_refused_before_loading(tiny_build, tmp_path, capsys):
    copy = tmp_path / tiny_build.name
    shutil.copytree(tiny_build, copy)
    weights = next(copy.glob("*_unet.mlpackage")) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    assert main(["--build", str(copy), "--prompt", "x", "--steps", "1", "--output", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "does not match its manifest" in err and "_unet.mlpackage" in err
    assert not (tmp_path / "x.png").exists()


def test_missing_file_is_refused(tiny_build, tmp_path):
    copy = tmp_path / tiny_build.name
    shutil.copytree(tiny_build, copy)
    (copy / "vocab.json").unlink()
    with pytest.raises(SdbuildError, match="vocab.json: missing"):
        Pipeline(copy, backend="evaluator")


def test_latest_build_and_missing_recipe(tiny_build, tmp_path):
    assert latest_build(tiny_build.parents[1], "tiny") == tiny_build
    with pytest.raises(SdbuildError, match="make build RECIPE=sd15"):
        latest_build(tmp_path, "sd15")


def test_coreml_backend_needs_macos_on_linux(tiny_build, capsys):
    import sys

    if sys.platform == "darwin":
        pytest.skip("Core ML is available here")
    assert main(["--build", str(tiny_build), "--prompt", "x", "--backend", "coreml"]) == 2
    assert "needs macOS" in capsys.readouterr().err
