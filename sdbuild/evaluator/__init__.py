"""A reference evaluator for Core ML ML Programs on Linux (Core ML predictions need macOS).

``ProgramEvaluator(package).predict(inputs)`` runs the program's ``main`` function op by op
with torch CPU kernels; see ``program.py`` for the precision model and ``ops/`` for kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sdbuild.quiet import import_coremltools

# The evaluator reads coremltools' protobufs at import; import coremltools quietly first.
import_coremltools()

from sdbuild.evaluator.program import DecodedWeights, ProgramEvaluator  # noqa: E402
from sdbuild.evaluator.registry import UnsupportedOpError, supported_op_types  # noqa: E402


def evaluate(package: str | Path | Any, inputs: dict[str, np.ndarray], *,
             fp16_storage: bool = False) -> dict[str, np.ndarray]:
    """Load ``package`` (path or ``MLModel``) and run it once on ``inputs``."""
    return ProgramEvaluator(package, fp16_storage=fp16_storage).predict(inputs)


__all__ = ["DecodedWeights", "ProgramEvaluator", "UnsupportedOpError", "evaluate", "supported_op_types"]
