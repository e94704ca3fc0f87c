"""Compressed weights: every constexpr form coremltools.optimize.coreml emits, checked against
the same model with its weights decompressed by coremltools itself, and against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthetic_components import synthetic_component

from sdbuild import contract
from sdbuild.evaluator import DecodedWeights, ProgramEvaluator
from sdbuild.metrics import psnr
from sdbuild.quiet import import_coremltools
from sdbuild.sample_inputs import sample_inputs
from sdbuild.stages.convert import convert_module
from sdbuild.stages.trace import reference_outputs

import_coremltools()
import coremltools.optimize.coreml as cto  # noqa: E402


class TinyConvNet(torch.nn.Module):
    """Conv and linear weights with channel counts every grouping/blocking mode accepts."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 16)

    def forward(self, x):
        y = torch.nn.functional.silu(self.conv1(x))
        y = self.conv2(y).mean(dim=(2, 3))
        return (self.fc2(torch.nn.functional.silu(self.fc1(y))),)  # outputs as a tuple, as contract modules


INTERFACE = contract.Interface(
    inputs=(contract.TensorSpec("x", (1, 8, 12, 12), "float16"),),
    outputs=(contract.TensorSpec("y", (1, 16), "float32"),),
)


def _palettize(nbits, **kwargs):
    return lambda m: cto.palettize_weights(m, cto.OptimizationConfig(
        cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=0, **kwargs)))


def _quantize(**kwargs):
    return lambda m: cto.linear_quantize_weights(m, cto.OptimizationConfig(
        cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0, **kwargs)))


def _prune(model):
    return cto.prune_weights(model, cto.OptimizationConfig(
        cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=0)))


def _joint(first, second):
    """Apply ``second`` on top of ``first``'s compression (joint compression, iOS18)."""
    def compress(model):
        inner = first(model)
        name, kwargs = second
        if name == "palettize":
            config = cto.OpPalettizerConfig(mode="kmeans", weight_threshold=0, **kwargs)
            return cto.palettize_weights(inner, cto.OptimizationConfig(config),
                                         joint_compression=True)
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0, **kwargs)
        return cto.linear_quantize_weights(inner, cto.OptimizationConfig(config),
                                           joint_compression=True)
    return compress


# (id, deployment target, compression, constexpr op it must produce, PSNR floor vs PyTorch)
CASES = [
    ("kmeans-2bit", "iOS16", _palettize(2), "constexpr_lut_to_dense", 8.0),
    ("kmeans-4bit", "iOS16", _palettize(4), "constexpr_lut_to_dense", 20.0),
    ("kmeans-6bit", "iOS17", _palettize(6), "constexpr_lut_to_dense", 30.0),
    ("kmeans-8bit", "iOS16", _palettize(8), "constexpr_lut_to_dense", 35.0),
    ("kmeans-4bit-grouped", "iOS18",
     _palettize(4, granularity="per_grouped_channel", group_size=4), "constexpr_lut_to_dense",
     20.0),
    ("kmeans-4bit-vector", "iOS18", _palettize(4, cluster_dim=2), "constexpr_lut_to_dense", 15.0),
    ("kmeans-4bit-channel-scale", "iOS18", _palettize(4, enable_per_channel_scale=True),
     "constexpr_blockwise_shift_scale", 20.0),
    ("int8-per-channel", "iOS16", _quantize(dtype="int8"), "constexpr_affine_dequantize", 35.0),
    ("int8-per-tensor", "iOS18", _quantize(dtype="int8", granularity="per_tensor"),
     "constexpr_blockwise_shift_scale", 30.0),
    ("int4-per-block", "iOS18", _quantize(dtype="int4", granularity="per_block", block_size=8),
     "constexpr_blockwise_shift_scale", 20.0),
    ("pruned", "iOS16", _prune, "constexpr_sparse_to_dense", 5.0),
    ("pruned-sparse18", "iOS18", _prune, "constexpr_sparse_to_dense", 5.0),
    ("pruned-then-4bit", "iOS18", _joint(_prune, ("palettize", {"nbits": 4})),
     "constexpr_lut_to_sparse", 5.0),
    ("pruned-then-int8", "iOS18", _joint(_prune, ("quantize", {"dtype": "int8"})),
     "constexpr_sparse_blockwise_shift_scale", 5.0),
]


def _op_types(model) -> set[str]:
    function = model.get_spec().mlProgram.functions["main"]
    return {op.type for op in function.block_specializations[function.opset].operations}


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return TinyConvNet().eval()


@pytest.mark.parametrize("case_id, target, compress, constexpr_op, torch_floor_db", CASES,
                         ids=[c[0] for c in CASES])
def test_compressed_model_matches_its_decompressed_weights(network, case_id, target, compress,
                                                           constexpr_op, torch_floor_db):
    model = convert_module(network, INTERFACE, precision="float16", target=target)
    compressed = compress(model)
    decompressed = cto.decompress_weights(compressed)
    assert constexpr_op in _op_types(compressed)
    assert not any(op.startswith("constexpr_") for op in _op_types(decompressed))

    inputs = sample_inputs(INTERFACE, seed=1)
    for fp16_storage in (True, False):
        ours = ProgramEvaluator(compressed, fp16_storage=fp16_storage).predict(inputs)["y"]
        theirs = ProgramEvaluator(decompressed, fp16_storage=fp16_storage).predict(inputs)["y"]
        # Same weights either way, up to rounding: coremltools stores the decompressed weights
        # in float16, float32 mode keeps the float32 products of scales and values.
        assert psnr(theirs, ours) >= 80.0
    reference = reference_outputs(network, INTERFACE, inputs)["y"]
    assert psnr(reference, ours) >= torch_floor_db


def test_palettized_text_encoder_matches_its_decompressed_weights():
    module, interface = synthetic_component("tiny-sd15", contract.TEXT_ENCODER)
    model = convert_module(module, interface, precision="float16", target="iOS16")
    config = cto.OptimizationConfig(op_type_configs={
        "linear": cto.OpPalettizerConfig(mode="kmeans", nbits=8, weight_threshold=0)})
    compressed = cto.palettize_weights(model, config)
    decompressed = cto.decompress_weights(compressed)
    assert "constexpr_lut_to_dense" in _op_types(compressed)
    inputs = sample_inputs(interface, seed=1)
    ours = ProgramEvaluator(compressed, fp16_storage=True).predict(inputs)
    theirs = ProgramEvaluator(decompressed, fp16_storage=True).predict(inputs)
    reference = reference_outputs(module, interface, inputs)
    for name in reference:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-3, atol=1e-3)
        assert psnr(reference[name], ours[name]) >= 35.0


def test_constexpr_ops_are_folded_at_load_time(network):
    model = convert_module(network, INTERFACE, precision="float16", target="iOS18")
    compressed = _palettize(4, granularity="per_grouped_channel", group_size=4)(model)
    evaluator = ProgramEvaluator(compressed)
    assert not any(step.op_type.startswith("constexpr_") for step in evaluator._steps)
    assert evaluator.ios == 18


def test_a_package_and_its_copy_decode_their_palettes_once(network, tmp_path):
    """Verification shares one DecodedWeights between a package and its chunks, which hold the
    same compressed weights in other files: each palette is decoded once, to the same values."""
    model = convert_module(network, INTERFACE, precision="float16", target="iOS16")
    compressed = _palettize(6)(model)
    compressed.save(str(tmp_path / "a.mlpackage"))
    compressed.save(str(tmp_path / "b.mlpackage"))
    decoded = DecodedWeights()
    first = ProgramEvaluator(tmp_path / "a.mlpackage", fp16_storage=True, decoded=decoded)
    second = ProgramEvaluator(tmp_path / "b.mlpackage", fp16_storage=True, decoded=decoded)
    alone = ProgramEvaluator(tmp_path / "b.mlpackage", fp16_storage=True)
    function = compressed.get_spec().mlProgram.functions["main"]
    palettes = sum(op.type == "constexpr_lut_to_dense" for op in function.block_specializations[function.opset].operations)
    assert palettes == len(decoded._results) == 4  # conv1, conv2, fc1, fc2
    weights = [name for name, const in second._consts.items()
               if any(const is shared for results in decoded._results.values() for shared in results)]
    assert len(weights) == palettes
    for name in weights:
        assert first._consts[name] is second._consts[name]
        assert torch.equal(alone._consts[name].value, second._consts[name].value)
    inputs = sample_inputs(INTERFACE, seed=1)
    np.testing.assert_array_equal(second.predict(inputs)["y"], alone.predict(inputs)["y"])
