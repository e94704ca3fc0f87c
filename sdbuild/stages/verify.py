"""Verify stage: the built artifact vs its PyTorch module on the same seeded inputs, as PSNR.

The reference outputs were computed from the float32 PyTorch module at trace time. On any OS the
artifact runs in sdbuild's own ML Program evaluator with float16 storage (as the device would);
on macOS it also runs in Core ML. The lowest PSNR per output is gated against the threshold, and
a chunked component's chunk pipeline against the whole model.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from sdbuild.config.schema import min_psnr_key
from sdbuild.errors import SdbuildError
from sdbuild.metrics import psnr


def run_backends(package: Path, inputs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Outputs of ``package`` per available backend."""
    from sdbuild.evaluator import ProgramEvaluator

    results = {"evaluator": ProgramEvaluator(package, fp16_storage=True).predict(inputs, progress=f"verify {package.stem}")}
    if sys.platform == "darwin":
        results["coreml"] = _predict_coreml(package, inputs)
    return results


def _predict_coreml(package: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from sdbuild.quiet import quiet_coremltools

    ct = quiet_coremltools()
    model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)
    spec_inputs = {i.name: i.type.multiArrayType.dataType for i in model.get_spec().description.input}
    float16 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    feed = {k: v.astype(np.float16 if spec_inputs[k] == float16 else np.float32) for k, v in inputs.items()}
    return {k: np.asarray(v, dtype=np.float32) for k, v in model.predict(feed).items()}


def compare(reference: dict[str, np.ndarray], backends: dict[str, dict[str, np.ndarray]]) -> dict:
    """The worst PSNR of each output over the backends, and which backends ran."""
    outputs = []
    for name, expected in reference.items():
        worst = min(psnr(expected, result[name]) for result in backends.values())
        outputs.append({"name": name, "psnr_db": round(worst, 2)})
    return {"backend": "+".join(sorted(backends)), "outputs": outputs}


def gate(component: str, result: dict, threshold: float, chunks_threshold: float) -> None:
    """Fail the build when an output, or the chunk pipeline against the whole model, is below its
    gate; the hint names the override that would let this result pass."""
    key = f"min_psnr.{min_psnr_key(component)}"
    for output in result["outputs"]:
        if output["psnr_db"] < threshold:
            raise SdbuildError(
                f"verification failed: {component} output '{output['name']}' has PSNR "
                f"{output['psnr_db']:.2f} dB, below the threshold of {threshold:.2f} dB; nothing was published",
                f"investigate the component, or if this loss is expected lower the gate: {key}={_passing_gate(output['psnr_db'])}",
            )
    chunks_psnr = result.get("chunks_psnr_db")
    if chunks_psnr is not None and chunks_psnr < chunks_threshold:
        raise SdbuildError(
            f"verification failed: the {component} chunk pipeline has PSNR {chunks_psnr:.2f} dB against the whole "
            f"{component}, below the threshold of {chunks_threshold:.2f} dB (min_psnr.chunks); nothing was published",
            f"investigate the chunking, or if this loss is expected lower the gate: min_psnr.chunks={_passing_gate(chunks_psnr)}",
        )


def _passing_gate(psnr_db: float) -> int:
    """The highest whole-dB gate this PSNR passes (gates are never negative)."""
    return max(0, math.floor(psnr_db))
