"""Every recipe and config-group option composes and validates; bad recipes fail with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sdbuild.cli import main
from sdbuild.preflight import CONF_DIR, compose_recipe
from sdbuild.config.schema import BuildConfig
from sdbuild.errors import SdbuildError
from sdbuild.sources.synthetic_lora import write_synthetic_lora
from sdbuild.spec import validate

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "recipe")


def test_required_recipes_exist():
    assert {"tiny", "sd15", "sd2-base", "sd2-ane", "sdxl"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_validates_offline(recipe, tmp_path, tmp_path_factory):
    # Real-model recipes name Hub ids, and recipes with additions name files a command writes
    # first: offline they are validated on their synthetic twin (synthetic VAE, ControlNets and
    # LoRAs, no embeddings).
    cfg = compose_recipe([f"recipe={recipe}", "model.source=synthetic", "embeddings=[]", f"output.dir={tmp_path}"])
    if cfg.vae.source is not None:
        cfg.vae.source = "synthetic"
    for controlnet in cfg.controlnet:
        controlnet.source = "synthetic"
    for lora in cfg.loras:
        lora.path = str(write_synthetic_lora(cfg.model.architecture, 0, "kohya",
                                             tmp_path_factory.mktemp("loras") / Path(lora.path).name))
    assert isinstance(OmegaConf.to_object(cfg), BuildConfig)
    spec = validate(cfg)
    assert spec.recipe == recipe, "a recipe's name must match its file name"
    assert spec.components
    assert not any(tmp_path.iterdir()), "validation must not write anything"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_file_starts_with_what_and_how(recipe):
    text = (ROOT / "recipes" / f"{recipe}.yaml").read_text()
    lines = text.splitlines()
    # Hydra reads `@package` only before any other comment, so the description comes second.
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith(f"# {recipe}:"), "the header says what the recipe builds"
    header = text.split("defaults:")[0]
    assert "make build" in header, "the header shows the command that builds it"


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
        cfg = compose_recipe([f"{group}={option}"])
        assert OmegaConf.to_object(cfg) is not None
        header = (CONF_DIR / group / f"{option}.yaml").read_text().splitlines()[0]
        assert header.startswith("#"), f"{group}/{option}.yaml starts with a comment saying what it does"


def test_command_line_beats_recipe():
    cfg = compose_recipe(["recipe=sd2-ane", "attention=original", "model.source=synthetic"])
    assert cfg.attention.implementation.value == "ORIGINAL"
    assert cfg.model.architecture == "sd21-base"
    assert cfg.model.source.value == "synthetic"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["attention=foo"], "attention=foo: no such option; choose one of: original, split_einsum, split_einsum_v2"),
        (["attention.implementation=FOO"], "ORIGINAL, SPLIT_EINSUM, SPLIT_EINSUM_V2"),
        (["atention=original"], "atention"),
        (["recipe=nope"], "recipe=nope: no such option"),
        (["+model.colour=red"], "colour"),
        (["batch_size=two"], "batch_size"),
        (["target.minimum_deployment_target=iOS12"], "iOS16"),
    ],
)
def test_bad_overrides_fail_in_one_line_naming_key_and_choices(overrides, expected, tmp_path, capsys):
    assert main([*overrides, f"output.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ")
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["latent.height=60", "latent.width=64"], "latent.height=60 is not a positive multiple of 8"),
        (["latent.height=64"], "latent.height and latent.width must be set together"),
        (["components=[unet,safety_checker]"], "has no component safety_checker"),
        (["components=[unet,text_encoder_2]"], "has no component text_encoder_2"),
        (["components=[unet,decoder]"], "unknown component 'decoder'"),
        (["components=[]"], "components is empty"),
        (["batch_size=3"], "batch_size=3"),
        (["min_psnr.vae=30"], "unknown key 'min_psnr.vae'"),
        (["model.source=hub", "model.id=null"], "model.source=hub needs model.id"),
        (["model.source=local"], "model.source=local needs model.path"),
        (["model.architecture=sd3"], "unknown architecture 'sd3'"),
        (["chunking=two_chunks", "chunking.num_chunks=1"], "chunking.num_chunks=1 makes no chunks"),
        (["chunking=two_chunks", "chunking.components=[unett]"], "chunking.components names unknown component unett"),
    ],
)
def test_invalid_recipes_fail_before_any_work(overrides, expected, tmp_path, capsys):
    assert main([*overrides, f"output.dir={tmp_path}", "cache.enabled=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1], err
    assert not any(tmp_path.iterdir()), "a rejected recipe leaves no output"


def test_missing_model_folder_names_the_path(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["model.source=local", f"model.path={missing}", f"output.dir={tmp_path / 'out'}"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_hub_id_offline_says_how_to_build_locally(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert main(["recipe=sd2-base", f"output.dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "stabilityai/stable-diffusion-2-1-base" in err
    assert "model.source=local" in err and "model.path" in err


def test_python_dash_m_is_the_same_builder():
    result = subprocess.run(
        [sys.executable, "-m", "sdbuild", "attention=nope"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    assert "attention=nope: no such option" in result.stderr


def test_sdbuild_error_renders_hint():
    assert str(SdbuildError("broken", "fix it")) == "broken (fix it)"


def test_multirun_builds_each_variant_into_its_own_folder(tmp_path, shared_cache_dir):
    result = subprocess.run(
        [sys.executable, "-m", "sdbuild", "-m", "recipe=tiny", "attention=original,split_einsum",
         "components=[unet]", f"output.dir={tmp_path}", f"cache.dir={shared_cache_dir}"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    builds = sorted(p for p in (tmp_path / "tiny").iterdir() if not p.name.startswith("."))
    assert len(builds) == 2
    from sdbuild.manifest import read_manifest

    attentions = sorted(read_manifest(b).attention for b in builds)
    assert attentions == ["ORIGINAL", "SPLIT_EINSUM"]
    unets = {read_manifest(b).components["unet"].sha256 for b in builds}
    assert len(unets) == 2, "the attention implementation changes the UNet's graph"
