"""coremltools' float16 pass (`common::add_fp16_cast`), with its overflow check in linear time.

Before casting an op to float16 the pass asks whether any float32 constant input holds a finite
value beyond float16's range. coremltools 9 answers with `np.where` over every element, which
allocates index arrays of 8 bytes per element per dimension: for the SD 2.1 UNet that was two
thirds of the conversion's time and a 0.6 GB spike per large weight. The check below gives the
same answer (so the same packages) from one comparison per element.
"""

from __future__ import annotations

import functools

import numpy as np

FP16_MAX = 65504.0
INFINITE_FROM = 1e38  # coremltools' own cut: larger magnitudes are infinities whose value does not matter


def holds_finite_beyond_fp16(value) -> bool:
    """Whether ``value`` has an element with FP16_MAX < |x| < INFINITE_FROM."""
    magnitude = np.abs(np.asarray(value))
    return bool(np.any((magnitude > FP16_MAX) & (magnitude < INFINITE_FROM)))


def fp16_overflow(op) -> bool:
    """`FP16ComputePrecision.fp16_overflow`: whether a float32 constant input of ``op`` would
    overflow float16."""
    for inputs in op.inputs.values():
        for var in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
            if var.op is not None and var.op.op_type == "const" and var.is_tensor_or_scalar_of(dtype="fp32"):
                if holds_finite_beyond_fp16(var.op.val.val):
                    return True
    return False


@functools.cache
def install() -> None:
    """Use the linear-time check in coremltools' float16 pass (once per process)."""
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    FP16ComputePrecision.fp16_overflow = staticmethod(fp16_overflow)
