"""Reading and writing ML Programs: the MIL program of a package, its weight tensors as stored,
and a program serialized back into a model without re-running the optimizer. Used by the
compress and chunk stages and by the evaluator's tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdbuild.errors import SdbuildError
from sdbuild.quiet import import_coremltools

if TYPE_CHECKING:
    import coremltools as ct
    from coremltools.converters.mil.mil import Program


@dataclass(frozen=True)
class WeightTensor:
    name: str  # the float const, or the constexpr op that decompresses it
    elements: int
    storage_bits: int  # indices + palettes + scales, as stored
    element_bits: int  # bits per element: 16 or 32 if float, else the index/integer width
    consumers: tuple[str, ...]  # op types reading it
    consumer_names: tuple[str, ...]
    compressed: bool


def load_program(model: "ct.models.MLModel | Path | str") -> "Program":
    """The MIL program of a saved or in-memory ML Program (a fresh copy, safe to edit)."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto import load as milproto

    if not isinstance(model, ct.models.MLModel):
        model = ct.models.MLModel(str(model), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise SdbuildError("only ML Programs can be compressed or chunked", "convert with convert_to='mlprogram'")
    return milproto.load(spec, spec.specificationVersion, model.weights_dir)


def weight_tensors(prog: "Program") -> list[WeightTensor]:
    """Every weight of the main function: non-scalar float consts and decompressing constexprs."""
    result = []
    for op in prog.functions["main"].operations:
        out = op.outputs[0]
        readers = [c for c in out.child_ops if not c.op_type.startswith("constexpr_")]
        if op.op_type.startswith("constexpr_") and readers:
            stored = _constexpr_sources(op)
            bits = [storage_bits(c) for c in stored]
            elements = int(np.prod(out.shape))
            result.append(WeightTensor(op.name, elements, sum(bits), round(max(bits) / elements),
                                       _types(readers), _names(readers), True))
        elif op.op_type == "const" and readers and _is_float_tensor(out):
            result.append(WeightTensor(op.name, int(np.prod(out.shape)), storage_bits(op),
                                       out.dtype.get_bitwidth(), _types(readers), _names(readers), False))
    return result


def _constexpr_sources(op) -> list:
    """The const ops a (chain of) constexpr op(s) decompresses from."""
    sources = []
    for var in op.inputs.values():
        producer = var.op
        if producer is None:
            continue
        if producer.op_type == "const":
            sources.append(producer)
        elif producer.op_type.startswith("constexpr_"):
            sources.extend(_constexpr_sources(producer))
    return sources


def storage_bits(const_op) -> int:
    """Bits a const op stores (sub-byte dtypes at their width); 0 for strings and bools, which
    are a few bytes of the program, not weights."""
    out = const_op.outputs[0]
    if not hasattr(out.dtype, "get_bitwidth"):
        return 0
    return int(np.prod(out.shape or ())) * out.dtype.get_bitwidth()


def _is_float_tensor(var) -> bool:
    from coremltools.converters.mil.mil import types

    return bool(var.shape) and types.is_tensor(var.sym_type) and types.is_float(var.dtype)


def _types(ops) -> tuple[str, ...]:
    return tuple(sorted({o.op_type for o in ops}))


def _names(ops) -> tuple[str, ...]:
    return tuple(sorted({o.name for o in ops}))


def program_to_model(prog: "Program", source_spec) -> "ct.models.MLModel":
    """Serialize ``prog`` as an ML Program of ``source_spec``'s version, without re-optimizing it."""
    ct = import_coremltools()
    from coremltools.converters.mil.converter import mil_convert

    # The program was optimized at conversion; compression and chunking only swap constants or
    # cut the graph, so the main pass pipeline is skipped (it takes minutes on a real UNet).
    return mil_convert(
        prog,
        convert_from="milinternal",
        convert_to="mlprogram",
        compute_units=ct.ComputeUnit.ALL,
        specification_version=source_spec.specificationVersion,
        pass_pipeline=ct.PassPipeline.EMPTY,
        skip_model_load=True,
    )
