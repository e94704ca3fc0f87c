"""Verify stage: the built artifact vs its PyTorch module on the same seeded inputs, as PSNR.

The reference outputs were computed from the float32 PyTorch module at trace time. On any OS the
artifact runs in sdbuild's own ML Program evaluator with float16 storage (as the device would);
on macOS it also runs in Core ML. The lowest PSNR per output is gated against the threshold.
A chunked component's chunks also run one after the other, as the runner runs them, and are
compared with the whole model, gated by `min_psnr.chunks`.

Key: the package's content, the reference (the conversion's key), the chunks' content and the
backends that run here, so a Mac sharing a cache filled on Linux still runs Core ML. Writes
`report.json`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdbuild.config.schema import min_psnr_key
from sdbuild.errors import SdbuildError
from sdbuild.manifest import ChunkInfo, OutputCheck, VerificationInfo
from sdbuild.metrics import psnr
from sdbuild.stages.stage import REPORT, Stage, StageContext, StageResult

if TYPE_CHECKING:
    from sdbuild.evaluator import DecodedWeights
    from sdbuild.runner.backends import Predictor

NOT_VERIFIED = VerificationInfo(verified=False, reason="verify=false in the recipe")


def available_backends() -> tuple[str, ...]:
    """The backends verification runs on this machine, sorted."""
    return ("coreml", "evaluator") if sys.platform == "darwin" else ("evaluator",)


def load_backend(name: str, package: Path, decoded: "DecodedWeights | None" = None) -> "Predictor":
    """``package`` in backend ``name``: Core ML on the CPU, or the evaluator with float16 storage
    (reusing the weights ``decoded`` holds, see `DecodedWeights`)."""
    if name == "coreml":
        from sdbuild.runner.backends import load_predictor

        return load_predictor("coreml", package, "CPU_ONLY")
    from sdbuild.evaluator import ProgramEvaluator

    return ProgramEvaluator(package, fp16_storage=True, decoded=decoded)


def run_backends(package: Path, inputs: dict[str, np.ndarray], backends: tuple[str, ...],
                 decoded: "DecodedWeights | None" = None) -> dict[str, dict[str, np.ndarray]]:
    """Outputs of ``package`` per backend."""
    outputs = {}
    for name in backends:
        predictor = load_backend(name, package, decoded)
        if name == "evaluator":  # it runs op by op: a long program shows its progress
            outputs[name] = predictor.predict(inputs, progress=f"verify {package.stem}")
        else:
            outputs[name] = predictor.predict(inputs)
    return outputs


def chunked_outputs(folder: Path, chunks: list[ChunkInfo], inputs: dict[str, np.ndarray],
                    decoded: "DecodedWeights | None" = None) -> dict[str, np.ndarray]:
    """The chunk pipeline's outputs in the evaluator, run by the runner's own chunked predictor."""
    from sdbuild.runner.backends import ChunkedPredictor

    return ChunkedPredictor([(load_backend("evaluator", folder / c.file, decoded),
                              [t.name for t in c.interface.inputs]) for c in chunks]).predict(inputs)


def lowest_psnr(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> float:
    """The lowest PSNR over ``expected``'s outputs; SdbuildError when ``actual`` lacks one."""
    missing = [name for name in expected if name not in actual]
    if missing:
        raise SdbuildError(f"the chunk pipeline does not produce {', '.join(missing)}",
                           "rebuild the chunks from this package")
    return min(psnr(expected[name], actual[name]) for name in expected)


@dataclass(frozen=True)
class Verified(StageResult):
    backend: str  # the backends that ran, joined by "+"
    outputs: list[OutputCheck]  # the worst PSNR of each output over the backends
    chunks_psnr_db: float | None = None  # chunk pipeline vs the whole model

    def save(self, folder: Path) -> None:
        data = {"backend": self.backend, "outputs": [o.model_dump() for o in self.outputs]}
        if self.chunks_psnr_db is not None:
            data["chunks_psnr_db"] = self.chunks_psnr_db
        (folder / REPORT).write_text(json.dumps(data, sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> "Verified":
        data = json.loads((folder / REPORT).read_text())
        return cls(data["backend"], [OutputCheck.model_validate(o) for o in data["outputs"]],
                   data.get("chunks_psnr_db"))

    def record(self, job) -> dict:
        return {"verification": VerificationInfo(verified=True, backend=self.backend, threshold_db=job.min_psnr,
                                                 outputs=self.outputs, chunks_psnr_db=self.chunks_psnr_db)}


def compare(reference: dict[str, np.ndarray], backends: dict[str, dict[str, np.ndarray]]) -> Verified:
    """The worst PSNR of each output over the backends, and which backends ran."""
    outputs = [OutputCheck(name=name, psnr_db=round(min(psnr(expected, result[name]) for result in backends.values()), 2))
               for name, expected in reference.items()]
    return Verified(backend="+".join(sorted(backends)), outputs=outputs)


def gate(component: str, result: Verified, threshold: float, chunks_threshold: float) -> None:
    """Fail the build when an output, or the chunk pipeline against the whole model, is below its
    gate; the hint names the override that would let this result pass."""
    key = f"min_psnr.{min_psnr_key(component)}"
    for output in result.outputs:
        if output.psnr_db < threshold:
            raise SdbuildError(
                f"verification failed: {component} output '{output.name}' has PSNR "
                f"{output.psnr_db:.2f} dB, below the threshold of {threshold:.2f} dB; nothing was published",
                f"investigate the component, or if this loss is expected lower the gate: {key}={_passing_gate(output.psnr_db)}",
            )
    chunks_psnr = result.chunks_psnr_db
    if chunks_psnr is not None and chunks_psnr < chunks_threshold:
        raise SdbuildError(
            f"verification failed: the {component} chunk pipeline has PSNR {chunks_psnr:.2f} dB against the whole "
            f"{component}, below the threshold of {chunks_threshold:.2f} dB (min_psnr.chunks); nothing was published",
            f"investigate the chunking, or if this loss is expected lower the gate: min_psnr.chunks={_passing_gate(chunks_psnr)}",
        )


def _passing_gate(psnr_db: float) -> int:
    """The highest whole-dB gate this PSNR passes (gates are never negative)."""
    return max(0, math.floor(psnr_db))


class VerifyStage(Stage):
    name = "verify"
    result = Verified
    runs_behind = True

    def key_parts(self, ctx: StageContext) -> dict | None:
        if not ctx.spec.verify:
            return None
        from sdbuild.package_io import package_digest

        chunked = ctx.results.get("chunk")
        return {"package": package_digest(ctx.latest_package()[1]), "reference": ctx.keys["convert"],
                "chunks": [c.sha256 for c in chunked.chunks] if chunked else [],
                "backends": list(available_backends())}

    def run(self, ctx: StageContext, out: Path) -> Verified:
        from sdbuild.evaluator import DecodedWeights

        inputs, expected = ctx.results["convert"].reference_data()
        decoded = DecodedWeights()  # the chunks hold the package's compressed weights: decode them once
        outputs = run_backends(ctx.latest_package()[1], inputs, available_backends(), decoded)
        result = compare(expected, outputs)
        chunked = ctx.results.get("chunk")
        if chunked is None:
            return result
        pipeline = chunked_outputs(chunked.folder, chunked.chunks, inputs, decoded)
        return Verified(result.backend, result.outputs, round(lowest_psnr(outputs["evaluator"], pipeline), 2))

    def check(self, ctx: StageContext, result: Verified) -> None:
        gate(ctx.job.component, result, ctx.job.min_psnr, ctx.job.min_chunks_psnr)

    def skipped(self, ctx: StageContext) -> dict:
        return {"verification": NOT_VERIFIED}
