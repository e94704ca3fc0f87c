"""ProgramEvaluator's contract: loading, inputs, outputs, precision model, errors."""

from __future__ import annotations

import numpy as np
import pytest

from sdbuild.errors import SdbuildError
from sdbuild.evaluator import ProgramEvaluator, UnsupportedOpError, evaluate
from sdbuild.quiet import import_coremltools

ct = import_coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402


def _convert(program, target=ct.target.iOS16, **kwargs):
    return ct.convert(program, convert_to="mlprogram", minimum_deployment_target=target,
                      compute_precision=ct.precision.FLOAT32, skip_model_load=True, **kwargs)


@pytest.fixture(scope="module")
def cancel_model():
    """y = (x + 1e-3) - x in float16 storage: zero on device for |x| >= 4, 1e-3 in float32."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3), dtype=types.fp16)],
                opset_version=ct.target.iOS16)
    def program(x):
        return mb.sub(x=mb.add(x=x, y=np.float16(1e-3)), y=x, name="y")

    return _convert(program)


@pytest.fixture(scope="module")
def matmul_model():
    """z = softmax(x @ w + b) in float32, with w and b as weights."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 4))], opset_version=ct.target.iOS16)
    def program(x):
        return mb.softmax(x=mb.add(x=mb.matmul(x=x, y=weight), y=bias), axis=-1, name="z")

    return _convert(program), weight, bias


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_matches_numpy_and_reports_its_interface(matmul_model):
    model, weight, bias = matmul_model
    evaluator = ProgramEvaluator(model)
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    out = evaluator.predict({"x": x})
    assert evaluator.input_names == ("x",)
    assert evaluator.output_names == ("z",)
    assert [(s.shape, s.dtype) for s in evaluator.input_specs] == [((3, 4), "float32")]
    assert [(s.shape, s.dtype) for s in evaluator.output_specs] == [((3, 5), "float32")]
    assert out["z"].dtype == np.float32
    np.testing.assert_allclose(out["z"], _softmax(x @ weight + bias), rtol=1e-5, atol=1e-6)


def test_package_path_and_mlmodel_give_identical_results(matmul_model, tmp_path):
    model, _, _ = matmul_model
    path = tmp_path / "model.mlpackage"
    model.save(str(path))
    x = {"x": np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)}
    from_path = ProgramEvaluator(path).predict(x)["z"]
    from_str = evaluate(str(path), x)["z"]
    from_model = ProgramEvaluator(model).predict(x)["z"]
    np.testing.assert_array_equal(from_path, from_model)
    np.testing.assert_array_equal(from_str, from_model)


def test_repeated_predictions_are_independent(matmul_model):
    evaluator = ProgramEvaluator(matmul_model[0])
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
    first = evaluator.predict({"x": a})["z"]
    evaluator.predict({"x": b})
    np.testing.assert_array_equal(evaluator.predict({"x": a})["z"], first)


def test_fp16_storage_rounds_float16_tensors_like_the_device(cancel_model):
    x = np.array([[1000.0, 4.0, 0.5], [-3000.0, 0.0, 1.0]], dtype=np.float32)
    exact = evaluate(cancel_model, {"x": x})["y"]
    device = evaluate(cancel_model, {"x": x}, fp16_storage=True)["y"]
    # float32 math keeps the 1e-3; float16 storage (spacing 0.5 at 1000) rounds it away.
    assert exact.dtype == device.dtype == np.float16  # the declared output type
    np.testing.assert_allclose(exact.astype(np.float32), 1e-3, rtol=0.05)
    assert device[0, 0] == 0 and device[1, 0] == 0 and device[0, 1] == 0
    assert device[1, 1] == np.float16(1e-3)


def test_float16_inputs_accept_float32_and_integer_arrays(cancel_model):
    evaluator = ProgramEvaluator(cancel_model, fp16_storage=True)
    as_float = evaluator.predict({"x": np.full((2, 3), 4.0, np.float32)})["y"]
    as_int = evaluator.predict({"x": np.full((2, 3), 4, np.int64)})["y"]
    np.testing.assert_array_equal(as_float, as_int)


@pytest.mark.parametrize(
    "inputs, problem",
    [
        ({}, "missing ['x']"),
        ({"x": np.zeros((2, 3)), "extra": np.zeros(1)}, "unexpected ['extra']"),
        ({"x": np.zeros((3, 2))}, "has shape (3, 2)"),
        ({"x": np.array([["a"] * 3] * 2)}, "non-numeric"),
    ],
)
def test_bad_inputs_are_rejected_with_the_fix(cancel_model, inputs, problem):
    with pytest.raises(SdbuildError) as error:
        ProgramEvaluator(cancel_model).predict(inputs)
    assert problem in error.value.message
    assert error.value.hint


def test_unsupported_op_is_named_with_its_opset_at_load_time():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS17)
    def program(x):
        return mb.add(x=x, y=mb.random_uniform(shape=np.array([2, 3], np.int32)))

    model = _convert(program, target=ct.target.iOS17)
    with pytest.raises(UnsupportedOpError) as error:
        ProgramEvaluator(model)
    assert "'random_uniform' (opset iOS17)" in str(error.value)
    assert isinstance(error.value, SdbuildError)


def test_neural_network_models_are_refused():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))])
    def program(x):
        return mb.relu(x=x)

    model = ct.convert(program, convert_to="neuralnetwork", skip_model_load=True)
    with pytest.raises(SdbuildError, match="not an ML Program"):
        ProgramEvaluator(model)


def test_missing_package_is_reported(tmp_path):
    with pytest.raises(SdbuildError, match="does not exist"):
        ProgramEvaluator(tmp_path / "absent.mlpackage")


def test_constant_subgraphs_fold_and_intermediates_are_released_once(matmul_model):
    evaluator = ProgramEvaluator(matmul_model[0])
    # Only the ops that depend on the input remain (weights and parameters are constants).
    assert [s.op_type for s in evaluator._steps] == ["linear", "softmax"]  # matmul+add fused
    released = [name for step in evaluator._steps for name in step.release]
    produced = {o.name for step in evaluator._steps for o in step.outputs}
    assert sorted(released) == sorted((produced | {"x"}) - set(evaluator.output_names))


HEADS_LAST = (0, 1, 3, 2)
ATTENTION_FORMS = {
    # name: (the axes of q, k, v and of the output from (B, H, L or S, E), the program), as
    # sdbuild's ORIGINAL and SPLIT_EINSUM attentions and other converters spell attention.
    "matmul": ((None, None, None, None),
               lambda q, k, v: mb.matmul(x=mb.softmax(x=mb.matmul(x=q, y=k, transpose_y=True), axis=-1), y=v)),
    "matmul-transposed-operands": (
        (HEADS_LAST, HEADS_LAST, None, HEADS_LAST),
        lambda q, k, v: mb.matmul(x=v, y=mb.softmax(x=mb.matmul(x=q, y=k, transpose_x=True), axis=-1),
                                  transpose_x=True, transpose_y=True)),
    "einsum-softmax-on-axis-1": (
        ((0, 3, 1, 2), (0, 2, 1, 3), (0, 3, 1, 2), (0, 3, 1, 2)),
        lambda q, k, v: mb.einsum(values=(v, mb.softmax(x=mb.einsum(values=(k, q), equation="bkhc,bchq->bkhq"),
                                                        axis=1)), equation="bchk,bkhq->bchq")),
}


def _axes(array: np.ndarray, axes: tuple | None) -> np.ndarray:
    return array if axes is None else np.ascontiguousarray(array.transpose(axes))


@pytest.mark.parametrize("form", list(ATTENTION_FORMS))
def test_attention_chain_is_fused_in_both_modes(form):
    """product -> softmax -> product runs as one attention kernel, with the same result."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for _ in range(3))
    axes, attention = ATTENTION_FORMS[form]
    arrays = [_axes(a, ax) for a, ax in zip((q, k, v), axes)]

    @mb.program(input_specs=[mb.TensorSpec(shape=a.shape) for a in arrays], opset_version=ct.target.iOS16)
    def program(q, k, v):
        return mb.identity(x=attention(q, k, v), name="out")

    model = _convert(program)
    inputs = dict(zip([i.name for i in model.get_spec().description.input], arrays))
    exact = ProgramEvaluator(model)
    device = ProgramEvaluator(model, fp16_storage=True)
    fused = [s.op_type for s in exact._steps if "softmax" in s.op_type]
    assert fused == [s.op_type for s in device._steps if "softmax" in s.op_type]
    assert fused == ["{0}+softmax+{0}".format(form.split("-")[0])]
    expected = _axes(_softmax(q @ np.swapaxes(k, -1, -2)) @ v, axes[3])
    np.testing.assert_allclose(exact.predict(inputs)["out"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(device.predict(inputs)["out"], expected, rtol=1e-5, atol=1e-5)
