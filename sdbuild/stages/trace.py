"""Trace stage: a component's PyTorch module -> TorchScript, on seeded contract-shaped inputs.

The tracer runs the module's float32 forward once; its outputs are kept as the reference that the
verify stage compares the converted artifact against, so no second forward is needed (for the
VAE at 512 px that forward was most of the trace stage's time).
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
    return trace_with_outputs(module, interface, example)[0]


def trace_with_outputs(module: torch.nn.Module, interface: Interface, example: dict[str, np.ndarray]
                       ) -> tuple[torch.jit.ScriptModule, dict[str, np.ndarray]]:
    """The traced module and the float32 outputs of the forward the tracer ran on ``example``
    (the same values as ``reference_outputs``: the tracer runs the eager ops)."""
    captured = []
    hook = module.register_forward_hook(lambda _module, _inputs, outputs: captured.append(outputs))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about every Python-level shape branch in diffusers; none applies to
            # the fixed shapes we build for.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            traced = torch.jit.trace(module.eval(), to_tensors(example, interface), check_trace=False)
    finally:
        hook.remove()
    (outputs,) = captured
    return traced, {spec.name: out.float().numpy() for spec, out in zip(interface.outputs, outputs)}
