"""Trace stage: a component's PyTorch module -> TorchScript, on seeded contract-shaped inputs.

The same seeded inputs give the float32 reference outputs that the verify stage compares the
converted artifact against, so the PyTorch module is needed only once, here.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from sdbuild.contract import Interface


def to_tensors(inputs: dict[str, np.ndarray], interface: Interface) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(inputs[spec.name]) for spec in interface.inputs)


def reference_outputs(module: torch.nn.Module, interface: Interface, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outputs = module(*to_tensors(inputs, interface))
    return {spec.name: out.float().numpy() for spec, out in zip(interface.outputs, outputs)}


def trace_module(module: torch.nn.Module, interface: Interface, example: dict[str, np.ndarray]) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python-level shape branch in diffusers; none applies to
        # the fixed shapes we build for.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(module.eval(), to_tensors(example, interface), check_trace=False)
