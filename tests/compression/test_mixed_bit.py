"""Mixed-bit pre-analysis on the tiny UNet, layer plans for target bit widths, and applying one."""

from __future__ import annotations

import json

import pytest
import torch

from sdbuild.cache import BuildCache
from sdbuild.config.compression import QuantizationConfig
from sdbuild.config.layer_plan import read_layer_plan
from sdbuild.errors import SdbuildError
from sdbuild.mixed_bit import analysis as mixed_bit
from sdbuild.mixed_bit.analysis import AnalysisSettings, analyse
from sdbuild.mixed_bit.cli import main
from sdbuild.mixed_bit.layer_plan import average_bits, choose_layer_plan, measure_layer_plan
from sdbuild.mixed_bit.store import analysis_key

from .conftest import ARCH, assert_recipe_applied

# Small and fast: the tiny UNet's bigger layers, three bit widths, one 8x8 input.
SETTINGS = AnalysisSettings(bit_widths=(2, 4, 8), num_inputs=1, latent_size=8, weight_threshold=8192)
CLI_SETTINGS = ["--bit-widths", "2", "4", "8", "--num-inputs", "1", "--latent-size", "8", "--weight-threshold", "8192"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two busy cores: torch's thread pool would mostly wait on itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_unet(tiny_source):
    from sdbuild.sources import load_submodel

    return load_submodel(tiny_source, "unet")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The command line, once: layer plans for 6 and 8 bits plus the analysis cache. (A quarter of the
    tiny UNet's weights are in layers under the threshold and stay float16: 5.45 bits at least.)"""
    root = tmp_path_factory.mktemp("mixed-bit")
    argv = ["--architecture", ARCH, "--targets", "6", "8", "--out-dir", str(root / "recipes"),
            "--name", "tiny", "--cache-dir", str(root / "cache"), "--min-psnr", "0", *CLI_SETTINGS]
    assert main(argv) == 0
    return root


@pytest.fixture(scope="module")
def analysis(tiny_unet, tiny_source, cli_run):
    return analyse(tiny_unet, SETTINGS, identity=tiny_source.digest, cache_dir=cli_run / "cache")


def test_cli_writes_layer_plans_a_summary_and_a_cache(cli_run):
    recipes = sorted(p.name for p in (cli_run / "recipes").glob("*.json"))
    assert recipes == ["tiny_6.00.json", "tiny_8.00.json"]
    summary = (cli_run / "recipes" / "tiny_summary.md").read_text()
    assert "| 6.00 |" in summary and "| 8.00 |" in summary
    (entry,) = BuildCache(cli_run / "cache").entries()
    assert entry.stage == "mixed_bit", "the analysis is a build-cache entry: `sdbuild cache` lists and prunes it"
    assert not list((cli_run / "cache" / "progress").glob("*")), "a finished analysis leaves no progress file"
    recipe = read_layer_plan(str(cli_run / "recipes" / "tiny_6.00.json"))
    assert recipe and set(recipe.values()) <= {2, 4, 8, 16}


def test_every_analysed_layer_is_more_accurate_with_more_bits(analysis):
    assert len(analysis.layers) > 20
    assert all(layer.elements > SETTINGS.weight_threshold for layer in analysis.layers)
    for layer in analysis.layers:
        assert layer.psnr_db[2] < layer.psnr_db[4] < layer.psnr_db[8], layer.name
    assert analysis.float_elements > 0


def test_the_cache_replaces_every_layer_measurement(tiny_unet, tiny_source, cli_run, monkeypatch):
    calls = []
    real = mixed_bit.run_unet
    monkeypatch.setattr(mixed_bit, "run_unet", lambda unet, inputs: calls.append(1) or real(unet, inputs))
    cached = analyse(tiny_unet, SETTINGS, identity=tiny_source.digest, cache_dir=cli_run / "cache")
    assert len(calls) == 1, "only the float16 reference runs"
    assert len(cached.layers) > 20
    other = analysis_key(tiny_source.digest, AnalysisSettings(**{**SETTINGS.__dict__, "palette_seed": 1}))
    assert other != analysis_key(tiny_source.digest, SETTINGS), "settings are part of the key"


def test_an_interrupted_analysis_resumes_where_it_stopped(tiny_unet, tiny_source, tmp_path, monkeypatch):
    measured = []
    real = mixed_bit._psnr_with

    def measure(module, nbits, *args):
        if len(measured) == 3 * len(SETTINGS.bit_widths):
            raise KeyboardInterrupt
        measured.append(module)
        return real(module, nbits, *args)

    monkeypatch.setattr(mixed_bit, "_psnr_with", measure)
    with pytest.raises(KeyboardInterrupt):
        analyse(tiny_unet, SETTINGS, identity=tiny_source.digest, cache_dir=tmp_path)
    assert BuildCache(tmp_path).entries() == [], "an unfinished analysis is not an entry"
    measured.clear()
    monkeypatch.setattr(mixed_bit, "_psnr_with", lambda module, nbits, *args: measured.append(module) or real(module, nbits, *args))
    finished = analyse(tiny_unet, SETTINGS, identity=tiny_source.digest, cache_dir=tmp_path)
    assert len(measured) == (len(finished.layers) - 3) * len(SETTINGS.bit_widths), "the first 3 layers are not measured again"
    assert [e.stage for e in BuildCache(tmp_path).entries()] == ["mixed_bit"]


def test_layer_plans_fit_their_targets_and_more_bits_buy_accuracy(analysis, tiny_unet):
    recipes = [choose_layer_plan(analysis, target) for target in (6.0, 7.0, 9.0)]
    for recipe in recipes:
        assert recipe.avg_bits <= recipe.target_bits
        assert recipe.avg_bits == pytest.approx(average_bits(analysis, recipe.layers), abs=1e-4)
        # Every palettized layer keeps the common threshold; layers at 16 bits could not.
        for layer in analysis.layers:
            nbits = recipe.layers[layer.name]
            if nbits != 16:
                assert layer.psnr_db[nbits] >= recipe.min_layer_psnr_db
    assert [r.avg_bits for r in recipes] == sorted(r.avg_bits for r in recipes)
    assert [r.min_layer_psnr_db for r in recipes] == sorted(r.min_layer_psnr_db for r in recipes)
    measured = [measure_layer_plan(tiny_unet, r, SETTINGS) for r in recipes]
    assert measured == sorted(measured), f"whole-recipe PSNR by target: {measured}"


def test_an_unreachable_target_fails(analysis):
    with pytest.raises(SdbuildError, match=r"no layer plan averages 5.0 bits: the fewest is 5\.\d\d"):
        choose_layer_plan(analysis, 5.0)


def test_a_layer_plan_under_the_build_gate_is_not_written(cli_run, analysis, tiny_unet, tmp_path, capsys):
    """A plan whose build would fail verification is not offered; the summary says why."""
    low, high = (measure_layer_plan(tiny_unet, choose_layer_plan(analysis, t), SETTINGS) for t in (6.0, 8.0))
    assert low < high
    argv = ["--architecture", ARCH, "--targets", "6", "8", "--out-dir", str(tmp_path), "--name", "tiny",
            "--cache-dir", str(cli_run / "cache"), *CLI_SETTINGS]
    capsys.readouterr()
    assert main([*argv, "--min-psnr", str((low + high) / 2)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["tiny_8.00.json"]
    out = capsys.readouterr().out
    assert "not written: the 6-bit plan measures" in out and "| no: under" in out
    (tmp_path / "tiny_8.00.json").unlink()
    assert main([*argv, "--min-psnr", str(high + 1)]) == 2
    assert "no layer plan reaches the" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json")), "nothing is written when no plan passes"


def test_the_analysis_gate_defaults_to_the_builds_gate():
    from sdbuild.cli import compose_recipe
    from sdbuild.mixed_bit.cli import DEFAULT_GATE_DB

    assert compose_recipe([]).min_psnr.default == DEFAULT_GATE_DB


def test_bad_settings_fail():
    with pytest.raises(SdbuildError, match="not palette sizes"):
        analyse(torch.nn.Linear(2, 2), AnalysisSettings(bit_widths=(3,)))


def test_a_generated_layer_plan_applies_to_the_converted_unet(cli_run, unet_ios16, compressed):
    path = cli_run / "recipes" / "tiny_6.00.json"
    recipe = json.loads(path.read_text())
    package, report = compressed(unet_ios16, QuantizationConfig(mode="mixed_bit", mixed_bit_recipe=str(path)), "iOS16")
    assert report.unmatched_plan_layers == []
    assert assert_recipe_applied(recipe, package) > len(recipe) / 2
    assert set(report.nbits) == set(recipe.values()) - {16}
