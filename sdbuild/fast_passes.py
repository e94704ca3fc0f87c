"""coremltools' graph-pass machinery made faster, with the same programs (so the same packages).

Profiling the SD 2.1 UNet's conversion found these costs, which check or log rather than convert:
- The float16 pass (`common::add_fp16_cast`) asks, before casting an op, whether a float32
  constant input holds a finite value beyond float16's range. coremltools 9 answers with `np.where`
  over every element (index arrays of 8 bytes per element per dimension: two thirds of that
  conversion's time). `holds_finite_beyond_fp16` answers the same from two reductions, and compares
  element-wise only when those find a value out of range. After each cast it checks small
  constants for values that became zero, counting elements by copying every constant, however
  large; `check_underflow_to_zero` skips the large ones before that copy.
- The pass pipeline validates the whole program after each of its ~110 passes (a third of the
  remaining time under cProfile), and prints the program into debug messages that are then discarded.
  `apply_pipeline` validates where it can catch something new: before the pipeline, after each
  dead-code elimination (where coremltools also checks the ops' essential scope information) and
  after the last pass; it formats the program only when debug logging is on.
- Leaving each `with block:` re-derives, for every var, the set of compressed (`constexpr_*`)
  vars upstream of it, by set unions over the whole function. A function without such ops gives
  every var the empty set, so `propagate_nonreplaceable_vars` assigns that directly.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

FP16_MAX = 65504.0
INFINITE_FROM = 1e38  # coremltools' own cut: larger magnitudes are infinities whose value does not matter
DEAD_CODE_ELIMINATION = "common::dead_code_elimination"
# What `install` replaced, by (class, attribute): kept so tests can compare against coremltools' own.
REPLACED: dict[tuple[type, str], object] = {}


def holds_finite_beyond_fp16(value) -> bool:
    """Whether ``value`` has an element with FP16_MAX < |x| < INFINITE_FROM."""
    value = np.asarray(value)
    if value.size == 0:
        return False
    # fmax/fmin skip NaN, so one NaN cannot hide an out-of-range value; no temporary array.
    if -FP16_MAX <= np.fmin.reduce(value, axis=None) and np.fmax.reduce(value, axis=None) <= FP16_MAX:
        return False
    magnitude = np.abs(value)
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


UNDERFLOW_CHECKED_BELOW = 400  # elements: coremltools checks only constants smaller than this


def check_underflow_to_zero(self, new_var, var) -> None:
    """`FP16ComputePrecision._check_underflow_to_zero`, without copying a large constant to learn
    that it is large."""
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    if new_var.val is not None and np.size(var.val) < UNDERFLOW_CHECKED_BELOW:
        coremltools_own = REPLACED[FP16ComputePrecision, "_check_underflow_to_zero"]
        coremltools_own(self, new_var, var)


def apply_pipeline(prog, pass_pipeline) -> None:
    """`PassPipelineManager.apply_pipeline`: run ``pass_pipeline``'s passes on ``prog`` in place."""
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    logger = logging.getLogger("coremltools")
    pass_pipeline.validate()
    prog.validate()
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(f"Program before {pass_pipeline} pipeline:\n{prog}")
    names = pass_pipeline.passes
    for index, name in enumerate(names):
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options(pass_pipeline.get_options(name))
        try:
            graph_pass(prog)
        except Exception:
            logger.error(f"the graph pass {name!r} failed")
            raise
        if name == DEAD_CODE_ELIMINATION:
            prog.validate(check_essential_scope=True)
        elif index == len(names) - 1:
            prog.validate()
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(f"Program after {pass_pipeline} pipeline:\n{prog}")


def propagate_nonreplaceable_vars(block) -> None:
    """`Block._propagate_nonreplaceable_vars`, direct for a function without compressed ops."""
    from coremltools.converters.mil.mil import Block, Function

    if not isinstance(block, Function) or any(op.blocks or op.op_type.startswith("constexpr_") for op in block.operations):
        coremltools_own = REPLACED[Block, "_propagate_nonreplaceable_vars"]
        coremltools_own(block)
        return
    for op in block.operations:
        for var in op.outputs or ():
            var._nonreplaceable_vars_upstream = set()


@functools.cache
def install() -> None:
    """Use the functions above in coremltools (once per process)."""
    from coremltools.converters.mil.mil import Block
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager

    ours = {(FP16ComputePrecision, "fp16_overflow"): staticmethod(fp16_overflow),
            (FP16ComputePrecision, "_check_underflow_to_zero"): check_underflow_to_zero,
            (PassPipelineManager, "apply_pipeline"): staticmethod(apply_pipeline),
            (Block, "_propagate_nonreplaceable_vars"): propagate_nonreplaceable_vars}
    for (owner, attribute), replacement in ours.items():
        REPLACED[owner, attribute] = owner.__dict__[attribute]
        setattr(owner, attribute, replacement)
