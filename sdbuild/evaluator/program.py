"""Load an ML Program once into an execution plan, then run it op by op with torch.

Load time does everything that does not depend on the inputs: constants (weights from
weight.bin included) are decoded to float32 tensors, ops whose inputs are all constant
(``constexpr_*`` decompression, shape arithmetic) are folded, every other op gets its kernel and
its input references resolved, attention chains (matmul or einsum -> softmax -> matmul or
einsum) become one fused kernel, and each intermediate tensor's last use is computed so that
``predict`` can release it right after.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from coremltools.proto import MIL_pb2

from sdbuild.contract import TensorSpec
from sdbuild.errors import SdbuildError
from sdbuild.evaluator import ops  # noqa: F401  (registers every kernel)
from sdbuild.evaluator.plan import Ref, Step, fuse_attention, names, plan_releases
from sdbuild.evaluator.registry import Args, Const, OutputInfo, UnsupportedOpError, lookup
from sdbuild.evaluator.values import (
    DESCRIPTION_NUMPY, DT, BlobFiles, decode_value, tensor_shape, torch_dtype,
)
from sdbuild.progress import bar


# Ops whose results are values of their inputs, rearranged. Every float16-declared tensor holds
# float16 values already (inputs and results are rounded, constants are stored so), so their
# results need no rounding in float16-storage mode.
_MOVES_VALUES = frozenset({
    "reshape", "reshape_like", "transpose", "expand_dims", "squeeze", "flatten2d", "concat", "stack",
    "split", "slice_by_index", "slice_by_size", "tile", "reverse", "depth_to_space", "space_to_depth",
    "pixel_shuffle", "pixel_unshuffle", "upsample_nearest_neighbor", "resize_nearest_neighbor", "crop",
    "gather", "gather_along_axis", "identity",
})


@dataclass(frozen=True)
class _Port:
    """One model input or output as the model description declares it."""

    spec: TensorSpec
    numpy_dtype: type
    allowed_shapes: tuple[tuple[int, ...], ...] | None  # enumerated shapes
    ranges: tuple[tuple[int, int], ...] | None  # per-dimension (lower, upper); upper -1 = any


class ProgramEvaluator:
    """Runs the ``main`` function of a Core ML ML Program on CPU with torch kernels.

    Computation is float32, as on Core ML's CPU compute unit, which runs float16 programs in
    float32. With ``fp16_storage=True`` every tensor the program declares as float16 is rounded
    to float16 when it is produced (inputs and op outputs; float16 constants are exact already),
    which is how the GPU and Neural Engine store them; float32-declared tensors stay float32. Fused
    attention (see `fuse_attention`) keeps its score and weight matrices in float32.
    Outputs are returned in their declared dtype.
    """

    def __init__(self, package: str | Path | Any, *, fp16_storage: bool = False,
                 decoded: "DecodedWeights | None" = None):
        spec, weights_dir = _load_spec(package)
        self.fp16_storage = fp16_storage
        self._decoded = decoded if decoded is not None else DecodedWeights()
        function = _main_function(spec)
        self.ios = _ios_version(function.opset)
        self._inputs = {p.spec.name: p for p in map(_port, spec.description.input)}
        self._outputs = tuple(_port(o) for o in spec.description.output)
        self._input_types = {i.name: i.type.tensorType.dataType for i in function.inputs}
        block = function.block_specializations[function.opset]
        self._output_names = tuple(block.outputs)
        self._consts: dict[str, Const] = {}
        self._steps: list[Step] = []
        self._build(block, BlobFiles(weights_dir))

    # -- public API ------------------------------------------------------------------------

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.spec.name for o in self._outputs)

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(p.spec for p in self._inputs.values())

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(p.spec for p in self._outputs)

    def predict(self, inputs: dict[str, np.ndarray], progress: str | None = None) -> dict[str, np.ndarray]:
        """Outputs for ``inputs``; ``progress`` names a bar over the ops (long programs)."""
        env = self._prepare_inputs(inputs)
        with torch.inference_mode():
            for step in bar(self._steps, progress) if progress else self._steps:
                values = {key: _resolve(ref, env) for key, ref in step.inputs}
                args = Args(values, step.outputs, self.ios, step.op_type)
                try:
                    results = step.kernel(args)
                except (UnsupportedOpError, SdbuildError):
                    raise
                except Exception as exc:
                    raise RuntimeError(
                        "Unable to compute the prediction using ML Program: op "
                        f"'{step.outputs[0].name}' ({step.op_type}) failed: {exc}"
                    ) from exc
                self._store(step, results, env, values)
                for name in step.release:
                    del env[name]
        return {
            port.spec.name: self._fetch(port.spec.name, env).numpy().astype(port.numpy_dtype)
            for port in self._outputs
        }

    # -- loading ---------------------------------------------------------------------------

    def _build(self, block: MIL_pb2.Block, blobs: BlobFiles) -> None:
        defined = set(self._input_types)
        for op in block.operations:
            outputs = tuple(
                OutputInfo(o.name, _element_type(o.type), tensor_shape(o.type)) for o in op.outputs
            )
            if op.type == "const":
                value = decode_value(op.attributes["val"], blobs)
                # Constants are stored at their declared precision already: nothing to round.
                self._consts[outputs[0].name] = Const(value, float16_exact=outputs[0].dtype == DT.FLOAT16)
                continue
            if len(op.blocks):
                raise UnsupportedOpError(
                    f"Core ML op '{op.type}' (opset iOS{self.ios}) has nested blocks (control "
                    "flow), which the sdbuild evaluator does not support",
                    "convert the model without data-dependent control flow",
                )
            kernel = lookup(op.type, self.ios)
            inputs = tuple(
                (key, self._reference(arg, defined, blobs)) for key, arg in op.inputs.items()
            ) + _constexpr_attributes(op, blobs)
            step = Step(kernel, op.type, inputs, outputs)
            if _all_constant(inputs):
                self._fold(step)
            else:
                self._steps.append(step)
                defined.update(o.name for o in outputs)
        keep = set(self._output_names)
        self._steps = fuse_attention(self._steps, keep, {n: p.spec.shape for n, p in self._inputs.items()})
        plan_releases(self._steps, keep)

    def _reference(self, argument: MIL_pb2.Argument, defined: set[str], blobs: BlobFiles) -> Ref:
        refs = []
        for binding in argument.arguments:
            if binding.WhichOneof("binding") == "value":
                refs.append(Const(decode_value(binding.value, blobs)))
            elif binding.name in self._consts:
                refs.append(self._consts[binding.name])
            elif binding.name in defined:
                refs.append(binding.name)
            else:
                raise SdbuildError(f"the program uses '{binding.name}' before defining it",
                                   "the .mlpackage is corrupt; rebuild it")
        return refs[0] if len(refs) == 1 else refs

    def _fold(self, step: Step) -> None:
        """Evaluate an op whose inputs are all constants once, at load time."""
        def evaluate() -> tuple[Const, ...]:
            env: dict[str, torch.Tensor] = {}
            values = {key: ref for key, ref in step.inputs}
            with torch.inference_mode():
                self._store(step, step.kernel(Args(values, step.outputs, self.ios, step.op_type)), env)
            # float16 storage rounded float16 results (decoded weights) to float16 values
            return tuple(Const(env[o.name], float16_exact=self.fp16_storage and o.dtype == DT.FLOAT16)
                         for o in step.outputs)

        if step.op_type.startswith("constexpr_"):
            results = self._decoded.get(_content_key(step, self.ios, self.fp16_storage), evaluate)
        else:
            results = evaluate()
        for info, const in zip(step.outputs, results):
            self._consts[info.name] = const

    # -- running ---------------------------------------------------------------------------

    def _prepare_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        if not isinstance(inputs, dict):
            raise SdbuildError("inputs must be a dict of input name to array",
                               f"pass {{{', '.join(self.input_names)}}}")
        missing = [n for n in self._inputs if n not in inputs]
        unexpected = [n for n in inputs if n not in self._inputs]
        if missing or unexpected:
            raise SdbuildError(
                f"model inputs do not match: missing {missing}, unexpected {unexpected}",
                f"pass exactly the model's inputs: {', '.join(self.input_names)}",
            )
        env = {}
        for name, port in self._inputs.items():
            array = _validated_input(port, inputs[name])
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(
                torch_dtype(self._input_types[name])
            )
            env[name] = self._round(tensor, self._input_types[name])
        return env

    def _store(self, step: Step, results: Any, env: dict[str, torch.Tensor],
               inputs: dict[str, Any] | None = None) -> None:
        """Check and keep an op's results; with ``inputs`` (the op's), results that share no memory
        with them are rounded in place."""
        results = results if isinstance(results, (tuple, list)) else (results,)
        if len(results) != len(step.outputs):
            raise RuntimeError(f"op {step.op_type} produced {len(results)} outputs, "
                               f"the program declares {len(step.outputs)}")
        read = _storages(inputs.values()) if inputs is not None and self.fp16_storage else None
        for tensor, info in zip(results, step.outputs):
            tensor = tensor.to(torch_dtype(info.dtype))
            _check_shape(tensor, info, step.op_type)
            if step.op_type in _MOVES_VALUES:  # float16 inputs give float16 values: nothing to round
                env[info.name] = tensor
                continue
            owned = read is not None and tensor.is_contiguous() and _storages([tensor]).isdisjoint(read)
            env[info.name] = self._round(tensor, info.dtype, in_place=owned)

    def _round(self, value: Any, dtype: int, in_place: bool = False) -> Any:
        if self.fp16_storage and dtype == DT.FLOAT16 and isinstance(value, torch.Tensor):
            # In place saves allocating a second full-size tensor per op (large for a UNet).
            return value.copy_(value.to(torch.float16)) if in_place else value.to(torch.float16).to(torch.float32)
        return value

    def _fetch(self, name: str, env: dict[str, torch.Tensor]) -> torch.Tensor:
        if name in env:
            return env[name]
        if name in self._consts:
            return self._consts[name].value
        raise SdbuildError(f"model output '{name}' is not produced by the program",
                           "the .mlpackage is corrupt; rebuild it")


class DecodedWeights:
    """Decompressed weights (folded ``constexpr_*`` ops) by the content of their compressed form.

    Evaluators that share one decode each palette once: a package and its chunks hold the same
    compressed weights under other names and files, so verification passes one instance to the
    whole model's evaluator and to its chunks'. Holds the decoded constants while it lives.
    """

    def __init__(self) -> None:
        self._results: dict[bytes, tuple[Const, ...]] = {}

    def get(self, key: bytes, decode: Any) -> tuple[Const, ...]:
        if key not in self._results:
            self._results[key] = decode()
        return self._results[key]


def _content_key(step: Step, ios: int, fp16_storage: bool) -> bytes:
    """A digest of what a constant op computes: its type and every input's dtype, shape and bytes."""
    digest = hashlib.blake2b(f"{step.op_type}/{ios}/{fp16_storage}".encode(), digest_size=20)
    for key, ref in step.inputs:
        for const in ref if isinstance(ref, list) else [ref]:
            if isinstance(const.value, torch.Tensor):
                array = const.value.contiguous().numpy()
                digest.update(f"{key}:{array.dtype}:{array.shape}".encode())
                digest.update(array.reshape(-1).view(np.uint8))
            else:
                digest.update(f"{key}={const.value!r}".encode())
    for info in step.outputs:
        digest.update(f"->{info.dtype}:{info.shape}".encode())
    return digest.digest()


# -- helpers ---------------------------------------------------------------------------------


def _load_spec(package: str | Path | Any) -> tuple[Any, str | None]:
    import coremltools as ct

    if isinstance(package, ct.models.MLModel):
        return package.get_spec(), package.weights_dir
    path = Path(package)
    if not path.exists():
        raise SdbuildError(f"model package {path} does not exist", "check the path")
    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
    except Exception as exc:
        raise SdbuildError(f"cannot read model package {path}: {exc}",
                           "pass an .mlpackage written by coremltools") from exc
    return model.get_spec(), model.weights_dir


def _main_function(spec: Any) -> MIL_pb2.Function:
    if spec.WhichOneof("Type") != "mlProgram":
        raise SdbuildError(
            f"the model is a {spec.WhichOneof('Type')}, not an ML Program",
            "convert with convert_to='mlprogram'",
        )
    functions = spec.mlProgram.functions
    name = spec.description.defaultFunctionName or "main"
    if name not in functions:
        raise SdbuildError(f"the ML Program has no function '{name}'",
                           f"functions present: {', '.join(functions)}")
    return functions[name]


def _ios_version(opset: str) -> int:
    """'CoreML6' -> 16: the opset names count Core ML versions, iOS versions are 10 higher."""
    match = re.fullmatch(r"CoreML(\d+)", opset)
    if not match:
        raise SdbuildError(f"unknown ML Program opset '{opset}'", "convert with coremltools")
    return int(match.group(1)) + 10


def _constexpr_attributes(op: MIL_pb2.Operation, blobs: BlobFiles) -> tuple[tuple[str, Const], ...]:
    """Up to iOS17, coremltools serializes the parameters of constexpr ops as attributes."""
    if not op.type.startswith("constexpr_"):
        return ()
    return tuple((key, Const(decode_value(value, blobs)))
                 for key, value in op.attributes.items() if key != "name")


def _element_type(value_type: MIL_pb2.ValueType) -> int:
    if value_type.WhichOneof("type") != "tensorType":
        raise SdbuildError(f"op outputs of kind {value_type.WhichOneof('type')} are not supported "
                           "by the evaluator")
    return value_type.tensorType.dataType


def _port(feature: Any) -> _Port:
    kind = feature.type.WhichOneof("Type")
    if kind != "multiArrayType":
        raise SdbuildError(f"model feature '{feature.name}' is of type {kind}",
                           "the evaluator supports multi-array inputs and outputs only")
    array = feature.type.multiArrayType
    type_name = array.ArrayDataType.Name(array.dataType)
    if type_name not in DESCRIPTION_NUMPY:
        raise SdbuildError(f"model feature '{feature.name}' has unsupported type {type_name}")
    numpy_dtype = DESCRIPTION_NUMPY[type_name]
    spec = TensorSpec(feature.name, tuple(int(s) for s in array.shape), np.dtype(numpy_dtype).name)
    flexibility = array.WhichOneof("ShapeFlexibility")
    allowed = ranges = None
    if flexibility == "enumeratedShapes":
        allowed = tuple(tuple(int(s) for s in shape.shape) for shape in array.enumeratedShapes.shapes)
    elif flexibility == "shapeRange":
        ranges = tuple((int(r.lowerBound), int(r.upperBound)) for r in array.shapeRange.sizeRanges)
    return _Port(spec, numpy_dtype, allowed, ranges)


def _validated_input(port: _Port, value: Any) -> np.ndarray:
    name = port.spec.name
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise SdbuildError(f"input '{name}' has non-numeric dtype {array.dtype}",
                           f"pass a numeric array ({port.spec.dtype})")
    shape = tuple(array.shape)
    if port.allowed_shapes is not None:
        ok = shape in port.allowed_shapes
        expected = " or ".join(str(s) for s in port.allowed_shapes)
    elif port.ranges is not None:
        ok = len(shape) == len(port.ranges) and all(
            lo <= s and (hi < 0 or s <= hi) for s, (lo, hi) in zip(shape, port.ranges)
        )
        expected = f"dimensions within {list(port.ranges)}"
    else:
        ok = shape == port.spec.shape
        expected = str(port.spec.shape)
    if not ok:
        raise SdbuildError(f"input '{name}' has shape {shape}", f"the model expects {expected}")
    if np.dtype(port.numpy_dtype).kind == "i" and array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise SdbuildError(f"input '{name}' is declared int32 but holds non-integer values",
                               "pass integer values")
    return array.astype(port.numpy_dtype, copy=False)


def _check_shape(tensor: torch.Tensor, info: OutputInfo, op_type: str) -> None:
    """A kernel result must match the shape the program declares: never a silent mismatch."""
    if info.shape is None:
        return
    actual = tuple(tensor.shape)
    if len(actual) != len(info.shape) or any(
        d is not None and d != a for d, a in zip(info.shape, actual)
    ):
        raise RuntimeError(f"op '{info.name}' ({op_type}) produced shape {actual}, "
                           f"the program declares {info.shape}")


def _resolve(ref: Ref, env: dict[str, torch.Tensor]) -> Any:
    if isinstance(ref, str):
        return env[ref]
    if isinstance(ref, list):
        return [env[r] if isinstance(r, str) else r for r in ref]
    return ref


def _storages(values: Any) -> set[int]:
    """The memory the tensors among ``values`` (tensors, Consts or lists of them) live in."""
    found = set()
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            tensor = item.stored if isinstance(item, Const) else item  # no upcast: results never alias it
            if isinstance(tensor, torch.Tensor):
                found.add(tensor.untyped_storage().data_ptr())
    return found


def _all_constant(inputs: tuple[tuple[str, Ref], ...]) -> bool:
    return all(not names(ref) for _, ref in inputs)
