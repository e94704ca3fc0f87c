"""Where a converted model runs: Core ML (macOS only) or sdbuild's ML Program evaluator (any OS)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from sdbuild.errors import SdbuildError

BACKENDS = ("auto", "coreml", "evaluator")


class Predictor(Protocol):
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def resolve_backend(name: str) -> str:
    if name not in BACKENDS:
        raise SdbuildError(f"unknown backend '{name}'", f"choose one of: {', '.join(BACKENDS)}")
    if name == "auto":
        return "coreml" if sys.platform == "darwin" else "evaluator"
    if name == "coreml" and sys.platform != "darwin":
        raise SdbuildError("the coreml backend needs macOS (Core ML predictions run only there)",
                           "use --backend evaluator (the default on Linux)")
    return name


class _CoreMLPredictor:
    def __init__(self, package: Path, compute_units: str):
        from sdbuild.quiet import import_coremltools

        ct = import_coremltools()
        self._model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit[compute_units])
        float16 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
        self._float16_inputs = {
            i.name for i in self._model.get_spec().description.input if i.type.multiArrayType.dataType == float16
        }

    def predict(self, inputs):
        feed = {k: v.astype(np.float16 if k in self._float16_inputs else np.float32) for k, v in inputs.items()}
        return {k: np.asarray(v, dtype=np.float32) for k, v in self._model.predict(feed).items()}


def load_predictor(backend: str, package: Path, compute_units: str) -> Predictor:
    if backend == "coreml":
        return _CoreMLPredictor(package, compute_units)
    from sdbuild.evaluator import ProgramEvaluator

    return ProgramEvaluator(package)


class ChunkedPredictor:
    """Runs chunk 1, then chunk 2, ...: each takes what it names from the inputs and earlier outputs."""

    def __init__(self, chunks: list[tuple[Predictor, list[str]]]):
        self._chunks = chunks

    def predict(self, inputs):
        """Every chunk's outputs (a model output may come from any chunk)."""
        available = dict(inputs)
        outputs: dict[str, np.ndarray] = {}
        for predictor, input_names in self._chunks:
            produced = predictor.predict({name: available[name] for name in input_names})
            available.update(produced)
            outputs.update(produced)
        return outputs
