"""Every quantization preset on the tiny UNet: sizes, bit widths, determinism, accuracy order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sdbuild.config.compression import QuantizationConfig
from sdbuild.errors import SdbuildError
from sdbuild.metrics import psnr
from sdbuild.package_io import package_digest, save_package
from sdbuild.quiet import import_coremltools
from sdbuild.config.layer_plan import layer_plan_of, read_layer_plan
from sdbuild.stages.compress import compress

from .conftest import TEST_WEIGHT_THRESHOLD, assert_recipe_applied, program_summary

CONF = Path(__file__).resolve().parents[2] / "conf" / "quantization"
IOS18_PRESETS = ("grouped_kmeans4", "blockwise_int4")
UNIFORM_BITS = {"linear8": 8, "kmeans1": 1, "kmeans2": 2, "kmeans4": 4, "kmeans6": 6, "kmeans8": 8,
                "grouped_kmeans4": 4, "blockwise_int4": 4}


def preset(name: str, **changes) -> QuantizationConfig:
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QuantizationConfig), OmegaConf.load(CONF / f"{name}.yaml")))
    return dataclasses.replace(cfg, **changes)


def weight_file_bytes(package: Path) -> int:
    return (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size


def compressible(package: Path, threshold: int) -> list:
    """Float weights coremltools compresses: rank >= 2, over the threshold, not embedding tables."""
    weights, _, ranks = program_summary(package)
    return [w for w in weights if w.elements > threshold and "gather" not in w.consumers and ranks[w.name] >= 2]


def evaluate(package: Path, inputs: dict) -> np.ndarray:
    from sdbuild.evaluator import ProgramEvaluator

    return ProgramEvaluator(package, fp16_storage=True).predict(inputs)["noise_pred"]


@pytest.fixture(scope="module")
def float_output(unet_ios16, tiny_inputs):
    return evaluate(unet_ios16, tiny_inputs)


@pytest.mark.parametrize("name", sorted(UNIFORM_BITS))
def test_uniform_preset_compresses_every_large_weight_to_its_bit_width(name, unet_ios16, unet_ios18, compressed):
    target = "iOS18" if name in IOS18_PRESETS else "iOS16"
    source = unet_ios18 if name in IOS18_PRESETS else unet_ios16
    cfg = preset(name, weight_threshold=TEST_WEIGHT_THRESHOLD)
    package, report = compressed(source, cfg, target)
    nbits = UNIFORM_BITS[name]

    after = program_summary(package)[0]
    packed = [w for w in after if w.compressed]
    assert report.mode == cfg.mode and report.nbits == [nbits]
    assert {w.element_bits for w in packed} == {nbits}
    candidates = compressible(source, TEST_WEIGHT_THRESHOLD)
    if name in IOS18_PRESETS:  # weights whose channels do not divide into groups/blocks stay float16
        assert 0.8 * len(candidates) <= len(packed) <= len(candidates)
    else:
        assert len(packed) == len(candidates)
    assert report.compressed_by_op_type.keys() <= {"conv", "linear", "matmul"}

    # The report is what the saved package holds.
    elements = sum(w.elements for w in after)
    assert report.avg_bits_per_weight == pytest.approx(sum(w.elements * w.element_bits for w in after) / elements, abs=1e-3)
    assert nbits < report.avg_bits_per_weight < nbits + 0.6, "small weights stay float16"
    # weight.bin adds a 64-byte header and 64-byte alignment per stored array (up to 3 per weight).
    overhead = 3 * 128 * len(after)
    assert report.weight_bytes_before <= weight_file_bytes(source) <= report.weight_bytes_before + overhead
    assert report.weight_bytes_after <= weight_file_bytes(package) <= report.weight_bytes_after + overhead
    expected_ratio = (report.avg_bits_per_weight / 16)
    assert report.weight_bytes_after / report.weight_bytes_before == pytest.approx(expected_ratio, rel=0.12)


def test_smaller_palettes_give_smaller_packages_and_lower_psnr(unet_ios16, compressed, tiny_inputs, float_output):
    sizes, quality = [], []
    for nbits in (1, 2, 4, 6, 8):
        package, report = compressed(unet_ios16, preset(f"kmeans{nbits}", weight_threshold=TEST_WEIGHT_THRESHOLD), "iOS16")
        sizes.append(weight_file_bytes(package))
        quality.append(psnr(float_output, evaluate(package, tiny_inputs)))
    assert sizes == sorted(sizes) and len(set(sizes)) == 5
    assert quality == sorted(quality), f"PSNR by bit width 1..8: {quality}"
    assert quality[-1] > 35.0, "8-bit palettes are close to float16"


def test_linear8_is_close_to_float16(unet_ios16, compressed, tiny_inputs, float_output):
    package, _ = compressed(unet_ios16, preset("linear8", weight_threshold=TEST_WEIGHT_THRESHOLD), "iOS16")
    assert psnr(float_output, evaluate(package, tiny_inputs)) > 35.0


def test_none_and_uncovered_components_are_returned_unchanged(unet_ios16):
    ct = import_coremltools()
    model = ct.models.MLModel(str(unet_ios16), skip_model_load=True)
    for cfg, component in ((preset("none"), "unet"), (preset("kmeans4"), "vae_decoder")):
        result, report = compress(model, cfg, component, "iOS16")
        assert result is model
        assert report.mode == "none" and report.nbits == [] and report.avg_bits_per_weight == 16.0
        assert report.weight_bytes_after == report.weight_bytes_before
    assert report.as_manifest().keys() == {"mode", "nbits", "avg_bits_per_weight", "weight_bytes_before",
                                           "weight_bytes_after"}


def test_same_recipe_same_bytes_and_the_seed_changes_them(unet_ios16, compressed, tmp_path):
    ct = import_coremltools()
    cfg = preset("kmeans4", weight_threshold=TEST_WEIGHT_THRESHOLD)
    first, _ = compressed(unet_ios16, cfg, "iOS16")
    again, _ = compress(ct.models.MLModel(str(unet_ios16), skip_model_load=True), cfg, "unet", "iOS16")
    save_package(again, tmp_path / "again.mlpackage")
    assert package_digest(tmp_path / "again.mlpackage") == package_digest(first)
    reseeded, _ = compressed(unet_ios16, dataclasses.replace(cfg, seed=1), "iOS16")
    assert package_digest(reseeded) != package_digest(first)


def test_ios18_options_refuse_a_model_converted_for_ios16(unet_ios16):
    ct = import_coremltools()
    model = ct.models.MLModel(str(unet_ios16), skip_model_load=True)
    with pytest.raises(SdbuildError, match="converted for iOS16"):
        compress(model, preset("blockwise_int4"), "unet", "iOS18")


def test_op_config_precedence_on_the_model(unet_ios16, compressed):
    # sdbuild's UNet runs every linear layer as a 1x1 conv, so all its weights feed conv ops.
    cfg = QuantizationConfig(mode="custom", weight_threshold=TEST_WEIGHT_THRESHOLD, op_config={
        "global": {"mode": "kmeans", "nbits": 6},
        "op_type": {"conv": {"mode": "linear8"}},
        "op_name": {"conv_in": None, "down_blocks.0.resnets.0.conv1": {"mode": "kmeans", "nbits": 2}},
    })
    package, report = compressed(unet_ios16, cfg, "iOS16")
    after = {w.name: w for w in program_summary(package)[0]}
    assert after["down_blocks_0_resnets_0_conv1_weight_to_fp16_palettized"].element_bits == 2
    assert not after["conv_in_weight_to_fp16"].compressed, "null in op_name keeps float16"
    assert report.nbits == [2, 8], "op_type beats global: no 6-bit weight"
    assert report.weights_by_nbits["2"] == 1


def test_mixed_bit_layer_plan_is_applied_by_layer_name(unet_ios16, compressed):
    cfg = preset("mixed_bit")
    recipe = read_layer_plan(cfg.mixed_bit_recipe)
    package, report = compressed(unet_ios16, cfg, "iOS16")
    # Every layer keeps its name through conversion, to_q included (its attention scale is
    # folded into the weight before tracing, not by coremltools after).
    assert report.unmatched_plan_layers == []
    assert any(layer.endswith(".to_q") for layer in recipe)
    assert_recipe_applied(recipe, package)
    assert report.nbits == sorted(set(recipe.values()) - {16})
    # Chosen for 4.00 bits over all UNet parameters.
    assert report.avg_bits_per_weight == pytest.approx(4.0, abs=0.05)


def test_a_layer_plan_for_another_model_fails(unet_ios16, tmp_path):
    ct = import_coremltools()
    recipe = tmp_path / "other.json"
    recipe.write_text('{"down_blocks.9.resnets.0.conv1": 4, "encoder.mid.conv": 6}')
    model = ct.models.MLModel(str(unet_ios16), skip_model_load=True)
    cfg = QuantizationConfig(mode="mixed_bit", mixed_bit_recipe=str(recipe))
    with pytest.raises(SdbuildError, match=r"no layer of the mixed-bit layer plan .* down_blocks\.9\.resnets\.0\.conv1"):
        compress(model, cfg, "unet", "iOS16", layer_plan_of(cfg))


def test_a_misspelt_op_name_fails(unet_ios16):
    ct = import_coremltools()
    model = ct.models.MLModel(str(unet_ios16), skip_model_load=True)
    cfg = QuantizationConfig(mode="kmeans", nbits=4, op_config={"op_name": {"down_blocks.0.resnet.0.conv1": None}})
    with pytest.raises(SdbuildError, match="does not have: down_blocks.0.resnet.0.conv1"):
        compress(model, cfg, "unet", "iOS16")
