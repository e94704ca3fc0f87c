"""The one CLI: help, validate, ls, schema, user recipe folders, --quiet; and the Python API."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import sdbuild
from sdbuild.cli import CONF_DIR, SUBCOMMANDS, main
from sdbuild.config.search_path import RECIPES_ENV
from sdbuild.errors import SdbuildError
from sdbuild.palette import KMeansPalette, kmeans_palette
from sdbuild.progress import QUIET_ENV, bar, counter
from sdbuild.recipe_cli import manifest_schema_text

ROOT = Path(__file__).resolve().parents[1]
USER_RECIPE = """\
# @package _global_
# mine: the tiny model's text encoder only, from a folder outside the package.
#   sdbuild --recipes DIR recipe=mine
defaults:
  - override /model: tiny-sd21-base

name: mine
description: A user's own recipe.
components: [text_encoder]
"""


@pytest.fixture
def user_recipes(tmp_path):
    folder = tmp_path / "my-recipes"
    folder.mkdir()
    (folder / "mine.yaml").write_text(USER_RECIPE)
    return folder


def test_help_lists_every_subcommand_and_the_build_form(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sdbuild:")
    assert "powered by Hydra" not in out
    for name in SUBCOMMANDS:
        assert f"sdbuild {name} " in out
    assert "sdbuild [recipe=NAME]" in out and "sdbuild -m " in out
    assert "--recipes DIR" in out and "--quiet" in out
    assert "recipe: sd15, sd15-inpainting, sd2-ane" in out, "the config groups and their options"


def test_validate_prints_config_plan_and_build_id_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    overrides = ["recipe=tiny-ane", f"output.dir={tmp_path / 'out'}", f"cache.dir={tmp_path / 'cache'}"]
    assert main(["validate", *overrides]) == 0
    out = capsys.readouterr().out
    expected = sdbuild.api.validated_spec(overrides)
    assert f"build id: {expected.build_id}" in out
    assert f"output:   {expected.output_dir}" in out
    config = yaml.safe_load(out.split("\n\n")[0])
    assert config["name"] == "tiny-ane" and config["chunking"]["enabled"] is True
    assert [line.split()[0] for line in out.splitlines() if "Stable_Diffusion" in line] == list(expected.components)
    assert not any(tmp_path.iterdir()), "validate writes nothing (no outputs, cache or Hydra folders)"


def test_validate_rejects_a_bad_recipe_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "attention=foo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: attention=foo: no such option")
    assert not any(tmp_path.iterdir())


def test_ls_lists_recipes_and_group_options_with_descriptions(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        description = yaml.safe_load(recipe.read_text())["description"]
        assert f"  {recipe.stem} " in out and description in out
    assert "quantization  (quantization=NAME)" in out
    assert "kmeans6" in out and "6-bit k-means palettization" in out
    for group in (p for p in CONF_DIR.iterdir() if p.is_dir()):
        for option in group.glob("*.yaml"):
            assert f"  {option.stem} " in out, f"{group.name}/{option.stem} is listed"


def test_a_reader_that_stops_early_gets_no_traceback():
    """`sdbuild ls | head -1`: the pipe closes before the listing is written."""
    child = subprocess.Popen([sys.executable, "-m", "sdbuild", "ls"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=ROOT)
    child.stdout.close()  # before the child has imported anything, so every write meets a closed pipe
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141
    assert stderr == ""


def test_user_recipe_folder_by_flag(user_recipes, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(RECIPES_ENV, raising=False)
    assert main(["validate", "recipe=mine", f"output.dir={tmp_path}"]) == 2
    assert "recipe=mine: no such option" in capsys.readouterr().err
    assert main(["validate", "--recipes", str(user_recipes), "recipe=mine", f"output.dir={tmp_path / 'o'}"]) == 0
    out = capsys.readouterr().out
    assert "name: mine" in out and "text_encoder" in out and "unet" not in out.split("\n\n")[1]
    assert RECIPES_ENV not in os.environ, "the flag lasts for its command only"
    assert main(["--recipes", "/no/such/folder", "ls"]) == 2
    assert capsys.readouterr().err.startswith("error: recipe folder /no/such/folder does not exist")
    (user_recipes / "tiny.yaml").write_text(USER_RECIPE.replace("name: mine", "name: tiny"))
    assert main(["validate", "--recipes", str(user_recipes), "recipe=tiny"]) == 2
    assert "tiny.yaml has the name of one in" in capsys.readouterr().err, "a shadowed recipe is refused, not ignored"


def test_user_recipe_folder_by_environment(user_recipes, monkeypatch, capsys):
    monkeypatch.setenv(RECIPES_ENV, str(user_recipes))
    assert main(["ls"]) == 0
    assert "  mine  " in capsys.readouterr().out.split("\n\n")[0]
    spec = sdbuild.api.validated_spec(["recipe=mine"])
    assert spec.recipe == "mine" and spec.components == ("text_encoder",)


def test_schema_committed_file_is_up_to_date(tmp_path, capsys):
    committed = ROOT / "schema" / "manifest.schema.json"
    assert committed.read_text() == manifest_schema_text(), "run `make schema` after changing sdbuild/manifest.py"
    out = tmp_path / "manifest.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert out.read_text() == committed.read_text()
    assert json.loads(out.read_text())["title"] == "Manifest"
    assert main(["schema", "--out", str(tmp_path / "missing" / "x.json")]) == 2


def test_quiet_build_prints_only_its_summary(tmp_path, shared_cache_dir, capsys):
    args = ["components=[text_encoder]", f"output.dir={tmp_path}", f"cache.dir={shared_cache_dir}"]
    assert main(args) == 0
    loud = capsys.readouterr().err
    assert main(["--quiet", *args]) == 0
    quiet = capsys.readouterr().err
    assert "[1/1] text_encoder" in loud and "[1/1]" not in quiet
    assert "built " in quiet and "PSNR dB" in quiet and "peak GB" in quiet, "the summary table and the result stay"
    assert QUIET_ENV not in os.environ


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal_and_not_quiet(monkeypatch):
    terminal, log = _Terminal(), io.StringIO()
    assert list(bar(range(3), "layers", stream=terminal)) == [0, 1, 2]
    assert "layers:" in terminal.getvalue() and "/3 [" in terminal.getvalue()
    assert list(bar(range(3), "layers", stream=log)) == [0, 1, 2] and log.getvalue() == ""
    monkeypatch.setenv(QUIET_ENV, "1")
    quiet_terminal = _Terminal()
    assert list(bar(range(3), "layers", stream=quiet_terminal)) == [0, 1, 2] and quiet_terminal.getvalue() == ""


def test_counted_progress_for_palettes_computed_inside_coremltools(monkeypatch):
    calls = []
    palette = KMeansPalette(2, seed=0, done=lambda: calls.append(1))
    weights = [np.linspace(-1, 1, 300, dtype=np.float16).reshape(30, 10) * k for k in (1, 2, 3)]
    for weight in weights:
        lut, indices = palette(weight)
        expected_lut, expected_indices = kmeans_palette(weight, 2, 0)
        assert np.array_equal(lut, expected_lut) and np.array_equal(indices, expected_indices)
    assert len(calls) == 3, "each palette reports itself done"
    assert palette == KMeansPalette(2, seed=0), "the callback is not part of the palette's identity"
    terminal = _Terminal()
    with counter(3, "k-means palettes", stream=terminal) as done:
        done()
    assert "k-means palettes:" in terminal.getvalue() and "/3 [" in terminal.getvalue()
    monkeypatch.setenv(QUIET_ENV, "1")
    with counter(3, "k-means palettes", stream=(quiet_terminal := _Terminal())) as done:
        done()
    assert quiet_terminal.getvalue() == ""


def test_python_api_builds_and_opens_a_build(tmp_path, shared_cache_dir):
    result = sdbuild.build("tiny", overrides=["components=[text_encoder]", f"output.dir={tmp_path}",
                                              f"cache.dir={shared_cache_dir}"])
    assert isinstance(result, sdbuild.BuildResult)
    assert result.build_dir == tmp_path / "tiny" / result.manifest.build_id
    opened = sdbuild.open_build(result.build_dir)
    assert opened.manifest == result.manifest
    package = opened.component_path("text_encoder")
    assert package.is_dir() and package.name.endswith("_text_encoder.mlpackage")
    assert opened.files[package.name] == package and (result.build_dir / "vocab.json") in opened.files.values()
    with pytest.raises(SdbuildError, match="has no component 'unet'"):
        opened.component_path("unet")
    (result.build_dir / "vocab.json").write_text("{}")
    with pytest.raises(SdbuildError, match="does not match its manifest"):
        sdbuild.open_build(result.build_dir)
    with pytest.raises(SdbuildError, match="no such option"):
        sdbuild.build("no-such-recipe")


def test_import_sdbuild_stays_light():
    code = ("import sys, sdbuild; sdbuild.build, sdbuild.open_build, sdbuild.OpenedBuild; "
            "print(sorted(m for m in ('torch', 'coremltools', 'hydra', 'diffusers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
