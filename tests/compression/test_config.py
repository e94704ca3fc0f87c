"""Presets parse into the schema, and every option a target cannot run fails before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sdbuild.config.compression import ChunkingConfig, QuantizationConfig
from sdbuild.errors import SdbuildError
from sdbuild.config.compression_rules import (
    DEPLOYMENT_TARGETS, check_chunking, check_compression, compression_rules, quantization_identity,
)
from sdbuild.config.layer_plan import layer_plan_of, read_layer_plan, shipped_layer_plans

CONF = Path(__file__).resolve().parents[2] / "conf"
QUANTIZATION_PRESETS = sorted(p.stem for p in (CONF / "quantization").glob("*.yaml"))
CHUNKING_PRESETS = sorted(p.stem for p in (CONF / "chunking").glob("*.yaml"))
BUILT = ["text_encoder", "unet", "vae_decoder"]


def preset(group: str, name: str, schema):
    """A preset file merged onto its structured config, as Hydra does."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(CONF / group / f"{name}.yaml")))


def test_required_presets_exist():
    assert {"none", "linear8", "kmeans1", "kmeans2", "kmeans4", "kmeans6", "kmeans8", "grouped_kmeans4",
            "blockwise_int4", "mixed_bit"} <= set(QUANTIZATION_PRESETS)
    assert {"none", "two_chunks"} <= set(CHUNKING_PRESETS)


@pytest.mark.parametrize("group,name", [("quantization", n) for n in QUANTIZATION_PRESETS]
                         + [("chunking", n) for n in CHUNKING_PRESETS])
def test_preset_header_says_what_and_how(group, name):
    lines = (CONF / group / f"{name}.yaml").read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert lines[0].startswith("# ") and len(lines[0]) > 20, "first line says what the preset does"
    assert any(f"{group}={name}" in line and "make build" in line for line in header), "shows the command"


@pytest.mark.parametrize("name", QUANTIZATION_PRESETS)
def test_quantization_preset_checks_on_its_target(name):
    cfg = preset("quantization", name, QuantizationConfig)
    rules = compression_rules(cfg, layer_plan_of(cfg))
    needs_ios18 = any(s.mode in ("grouped_kmeans", "blockwise_int4") for s in rules.schemes())
    check_compression(cfg, "iOS18", BUILT)
    check_compression(cfg, "macOS15", BUILT)
    if needs_ios18:
        with pytest.raises(SdbuildError, match="needs deployment target iOS18 or macOS15"):
            check_compression(cfg, "iOS17", BUILT)
    else:
        for target in DEPLOYMENT_TARGETS:
            check_compression(cfg, target, BUILT)


def test_kmeans_presets_cover_the_reference_components_and_bit_widths():
    for nbits in (1, 2, 4, 6, 8):
        cfg = preset("quantization", f"kmeans{nbits}", QuantizationConfig)
        assert (cfg.mode, cfg.nbits) == ("kmeans", nbits)
        assert set(cfg.components) == {"text_encoder", "text_encoder_2", "unet", "refiner", "control-unet", "controlnet"}
        assert "vae_decoder" not in cfg.components and "safety_checker" not in cfg.components


@pytest.mark.parametrize("name", CHUNKING_PRESETS)
def test_chunking_presets(name):
    cfg = preset("chunking", name, ChunkingConfig)
    check_chunking(cfg)
    assert cfg.enabled == (name != "none")
    if cfg.enabled:
        assert cfg.num_chunks == 2 and cfg.max_chunk_weight_mb == 1024
        assert set(cfg.components) == {"unet", "refiner", "control-unet"}


def test_mixed_bit_preset_names_a_shipped_layer_plan():
    cfg = preset("quantization", "mixed_bit", QuantizationConfig)
    assert cfg.mixed_bit_recipe in shipped_layer_plans()
    plan = read_layer_plan(cfg.mixed_bit_recipe)
    assert set(plan.values()) <= {1, 2, 4, 6, 8, 16} and len(set(plan.values())) > 1


@pytest.mark.parametrize("cfg,message", [
    (QuantizationConfig(mode="kmeans", nbits=3), "nbits in"),
    (QuantizationConfig(mode="kmeans"), "nbits in"),
    (QuantizationConfig(mode="kmeans5"), "unknown quantization.mode"),
    (QuantizationConfig(mode="grouped_kmeans", nbits=4, group_size=0), "group_size must be a positive"),
    (QuantizationConfig(mode="mixed_bit"), "needs quantization.mixed_bit_recipe"),
    (QuantizationConfig(mode="mixed_bit", mixed_bit_recipe="/nonexistent/recipe.json"), "not found"),
    (QuantizationConfig(mode="mixed_bit", mixed_bit_recipe="no-such-shipped-recipe"), "not found"),
    (QuantizationConfig(mode="custom"), "needs quantization.op_config"),
    (QuantizationConfig(mode="custom", op_config={"op_type": {"convolution": {"mode": "kmeans", "nbits": 4}}}),
     "unknown op type 'convolution'"),
    (QuantizationConfig(mode="custom", op_config={"globl": {"mode": "linear8"}}), "unknown key globl"),
    (QuantizationConfig(mode="kmeans", nbits=4, op_config={"op_name": {"conv_in": {"mode": "kmeans", "nbits": 7}}}),
     "op_name.conv_in: kmeans needs nbits"),
    (QuantizationConfig(mode="custom", op_config={"global": {"mode": "linear8", "bits": 8}}), "unknown key bits"),
    (QuantizationConfig(mode="none", op_config={"global": {"mode": "linear8"}}), "would be ignored"),
    (QuantizationConfig(mode="linear8", components=["unet", "vae"]), "unknown component vae"),
    (QuantizationConfig(mode="linear8", weight_threshold=-1), "negative"),
])
def test_bad_options_fail_with_a_clear_error(cfg, message):
    with pytest.raises(SdbuildError, match=message) as caught:
        check_compression(cfg, "iOS18", BUILT)
    assert caught.value.hint, "every error names the fix"


def test_ios18_options_inside_op_config_are_checked_against_the_target():
    cfg = QuantizationConfig(mode="kmeans", nbits=6, op_config={"op_type": {"linear": {"mode": "blockwise_int4"}}})
    with pytest.raises(SdbuildError, match="blockwise_int4 needs deployment target iOS18"):
        check_compression(cfg, "macOS14", BUILT)
    check_compression(cfg, "iOS18", BUILT)


def test_target_is_not_checked_when_the_preset_covers_nothing_built():
    cfg = QuantizationConfig(mode="grouped_kmeans", nbits=4, components=["unet"])
    check_compression(cfg, "iOS16", ["vae_decoder"])
    with pytest.raises(SdbuildError, match="unknown deployment target"):
        check_compression(cfg, "iOS19", ["vae_decoder"])


def test_layer_plan_file_values_are_validated(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"down_blocks.0.resnets.0.conv1": 3}))
    with pytest.raises(SdbuildError, match="bit widths outside"):
        check_compression(QuantizationConfig(mode="mixed_bit", mixed_bit_recipe=str(bad)), "iOS17", BUILT)
    bad.write_text("{not json")
    with pytest.raises(SdbuildError, match="not valid JSON"):
        read_layer_plan(str(bad))


def test_precedence_name_over_type_over_global():
    cfg = QuantizationConfig(mode="kmeans", nbits=6, op_config={
        "global": {"mode": "kmeans", "nbits": 4},
        "op_type": {"conv": {"mode": "linear8"}, "linear": None},
        "op_name": {"conv_in": {"mode": "kmeans", "nbits": 8}},
    })
    rules = compression_rules(cfg, None)
    assert (rules.default.mode, rules.default.nbits) == ("kmeans", 4)
    assert rules.by_type["conv"].mode == "linear8" and rules.by_type["linear"] is None
    assert rules.by_type["gather"] is None, "embedding tables stay float16, as in the reference"
    assert rules.by_name["conv_in"].nbits == 8


def test_grouped_preset_on_an_ios17_recipe_fails_at_validation_before_any_work(tmp_path):
    from sdbuild.preflight import compose_recipe
    from sdbuild.spec import validate

    cfg = compose_recipe(["recipe=sd2-ane", "model.source=synthetic", "quantization=grouped_kmeans4",
                          f"output.dir={tmp_path}"])
    with pytest.raises(SdbuildError, match="grouped_kmeans needs deployment target iOS18"):
        validate(cfg)
    assert not any(tmp_path.iterdir())


def test_cache_identity_follows_the_layer_plan_content_not_its_path(tmp_path):
    plan = tmp_path / "r.json"
    plan.write_text('{"conv_in": 4}')
    cfg = QuantizationConfig(mode="mixed_bit", mixed_bit_recipe=str(plan))
    before = quantization_identity(cfg, layer_plan_of(cfg))
    plan.write_text('{"conv_in": 6}')
    assert quantization_identity(cfg, layer_plan_of(cfg)) != before
    assert json.dumps(before, sort_keys=True), "plain JSON data"


@pytest.mark.parametrize("cfg,message", [
    (ChunkingConfig(enabled=True, num_chunks=1), "num_chunks=1 makes no chunks"),
    (ChunkingConfig(enabled=True, max_chunk_weight_mb=0), "leaves no room"),
    (ChunkingConfig(enabled=True, components=["unet", "Unet"]), "unknown component Unet"),
])
def test_bad_chunking_options_fail(cfg, message):
    with pytest.raises(SdbuildError, match=message):
        check_chunking(cfg)
