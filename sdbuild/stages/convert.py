"""Convert stage: load one component's weights, trace it, convert it to a float16 (or float32) ML
Program with the contract's interface, and keep the PyTorch reference outputs for verification.

Key: the source, the additions that change its weights, the component's interface, attention, precision, deployment target, tool
versions and SOURCE_DATE_EPOCH's date (written into the package). Writes `model.mlpackage` and
`reference.npz` (the verification inputs as `in.<name>`, the float32 outputs as `out.<name>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdbuild.contract import Interface
from sdbuild.manifest import CompressionInfo
from sdbuild.quiet import import_coremltools
from sdbuild.sources.additions import identities
from sdbuild.stages.stage import PACKAGE, Stage, StageContext, StageResult
from sdbuild.versions import tool_versions

if TYPE_CHECKING:
    import coremltools as ct
    import torch

REFERENCE = "reference.npz"
# The inputs of the trace, whose outputs are the verification reference. Tracing records no input
# values (fixed shapes, no data-dependent branches), so the package does not depend on them.
VERIFICATION_SEED = 1234
_NUMPY_DTYPES = {"float16": np.float16, "float32": np.float32}


def convert_module(
    module: "torch.nn.Module",
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
    import torch

    ct = import_coremltools()
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


@dataclass(frozen=True)
class Converted(StageResult):
    package: Path
    reference: Path

    @classmethod
    def load(cls, folder: Path) -> "Converted":
        return cls(folder / PACKAGE, folder / REFERENCE)

    def reference_data(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(verification inputs, float32 PyTorch outputs on them)."""
        stored = np.load(self.reference)
        inputs = {k[3:]: stored[k] for k in stored.files if k.startswith("in.")}
        expected = {k[4:]: stored[k] for k in stored.files if k.startswith("out.")}
        return inputs, expected

    def files(self, job) -> dict[str, Path]:
        return {job.file_name: self.package}

    def record(self, job) -> dict:
        weights = self.package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
        size = weights.stat().st_size if weights.exists() else 0
        return {"compression": CompressionInfo(mode="none", nbits=[], avg_bits_per_weight=16.0,
                                               weight_bytes_before=size, weight_bytes_after=size)}


class ConvertStage(Stage):
    name = "convert"
    result = Converted
    reports_itself = True

    def key_parts(self, ctx: StageContext) -> dict:
        spec, job = ctx.spec, ctx.job
        parts = {
            "source": spec.source.identity(),
            "component": job.component,
            "interface": job.interface.as_dict(),
            "attention": job.attention,
            "precision": job.precision,
            "target": spec.deployment_target,
            "tools": tool_versions(),
        }
        if spec.source_date is not None:  # only when set, so undated builds keep their keys
            parts["source_date"] = spec.source_date
        additions = identities(job.additions)
        if additions:  # only when some touch this component, so its other keys stay as they were
            parts["additions"] = additions
        return parts

    def run(self, ctx: StageContext, out: Path) -> Converted:
        # torch, diffusers and coremltools are imported only when a stage really runs, so a fully
        # cached rebuild costs seconds.
        from sdbuild.memory import map_large_allocations, return_freed_memory
        from sdbuild.package_io import save_package
        from sdbuild.sample_inputs import sample_inputs
        from sdbuild.stages import load
        from sdbuild.stages.trace import trace_with_outputs

        spec, job = ctx.spec, ctx.job
        with ctx.step("load", f"{job.submodel} weights only"):
            module = load.load_component(spec, job)
        map_large_allocations(sum(p.numel() * p.element_size() for p in module.parameters()))
        with ctx.step("trace"):
            verify_inputs = sample_inputs(job.interface, seed=VERIFICATION_SEED)
            traced, expected = trace_with_outputs(module, job.interface, verify_inputs)
            del module
            return_freed_memory()  # the forward's activations, before conversion adds float16 weights
        ctx.single_threaded()
        with ctx.step("convert", f"{job.precision}, {spec.deployment_target}"):
            model = convert_module(traced, job.interface, precision=job.precision, target=spec.deployment_target)
            del traced
            save_package(model, out / PACKAGE, metadata=ctx.package_metadata())
        np.savez(out / REFERENCE, **{f"in.{k}": v for k, v in verify_inputs.items()},
                 **{f"out.{k}": v for k, v in expected.items()})
        return Converted.load(out)
