"""Convert stage: TorchScript (or an nn.Module) -> a Core ML ML Program with the contract's interface."""

from __future__ import annotations

import numpy as np
import torch

from sdbuild.contract import Interface
from sdbuild.quiet import quiet_coremltools

_NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32}


def convert_module(
    module: torch.nn.Module,
    interface: Interface,
    *,
    precision: str,
    target: str,
) -> "ct.models.MLModel":
    """Convert a traced module whose positional inputs/outputs follow ``interface``.

    ``precision`` is the compute precision ("float16" or "float32"); ``target`` a coremltools
    deployment target name such as "macOS13" or "iOS17". Linux cannot load Core ML models, so the
    result is never compiled here (skip_model_load).
    """
    ct = quiet_coremltools()
    if not isinstance(module, torch.jit.ScriptModule):
        from sdbuild.sample_inputs import sample_inputs
        from sdbuild.stages.trace import trace_module

        module = trace_module(module, interface, sample_inputs(interface))
    return ct.convert(
        module,
        inputs=[
            ct.TensorType(name=t.name, shape=t.shape, dtype=_NUMPY_DTYPES[t.dtype]) for t in interface.inputs
        ],
        outputs=[ct.TensorType(name=t.name, dtype=_NUMPY_DTYPES[t.dtype]) for t in interface.outputs],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
        minimum_deployment_target=getattr(ct.target, target),
        skip_model_load=True,
    )
