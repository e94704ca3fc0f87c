"""pytest plugin: run coremltools' own MIL op tests with the sdbuild evaluator as the backend.

coremltools ships per-op tests (``coremltools/converters/mil/mil/ops/tests/iOS*/``) that build a
program, convert it and compare Core ML's prediction with numpy-computed expected values; the
prediction step only runs on macOS. This plugin, loaded with ``-p`` into a separate pytest run of
those files, substitutes the evaluator for the Core ML runtime:

- ``compare_backend`` (the helper ``run_compare_builder`` calls) predicts with the evaluator and
  keeps coremltools' tolerances. The tests target Core ML's CPU compute unit, which computes
  float16 programs in float32, and some expected values were computed in float16 by the tests
  themselves, so a case passes when it matches in float32 mode or, failing that, with float16
  storage (the two bracket what a device computes);
- ``MLModel.predict`` (called directly by a few tests) goes to the evaluator too.

Each case is classified (``passed`` / ``failed`` / ``unsupported`` op / ``not_evaluated``, for
cases that never reach a prediction) and the tally is written as JSON to
``$SDBUILD_CONFORMANCE_REPORT``. ``$SDBUILD_CONFORMANCE_PER_TEST`` keeps a deterministic sample of
at most that many parametrizations per test function, so the run fits in a few minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict

import numpy as np
import pytest

# Read by coremltools' testing_reqs at import: ML Program backends only, fp16 and fp32.
os.environ["PYMIL_TEST_TARGETS"] = "mlprogram"
os.environ["INCLUDE_MIL_FP32_UNIT_TESTS"] = "1"

_EVALUATED: set[str] = set()
_OUTCOMES: dict[str, dict] = {}
_CURRENT: list[str] = [""]
_RECORDING = [True]  # False in an xdist controller, which only relays its workers' reports


def _predict(mlmodel, inputs: dict, fp16_storage: bool = False) -> dict:
    from sdbuild.evaluator import ProgramEvaluator

    _EVALUATED.add(_CURRENT[0])
    arrays = {k: np.asarray(v, dtype=np.float32) if np.ndim(v) else np.array([v], np.float32)
              for k, v in inputs.items()}
    return ProgramEvaluator(mlmodel, fp16_storage=fp16_storage).predict(arrays)


def _compare_backend(mlmodel, input_key_values, expected_outputs, dtype="fp32", atol=1e-04,
                     rtol=1e-05, also_compare_shapes=True, state=None, allow_mismatch_ratio=0.0):
    """coremltools' compare_backend, predicting with the evaluator instead of Core ML."""
    import coremltools as ct

    if state is not None:
        pytest.skip("stateful models are outside the evaluator's scope")
    prediction = _predict(mlmodel, input_key_values)
    if expected_outputs is None:
        return prediction
    if mlmodel.compute_unit != ct.ComputeUnit.CPU_ONLY or dtype == "fp16":
        atol, rtol = max(atol * 100.0, 5e-1), max(rtol * 100.0, 5e-2)
    try:
        _assert_matches(prediction, expected_outputs, atol, rtol, also_compare_shapes,
                        allow_mismatch_ratio)
    except AssertionError:
        prediction = _predict(mlmodel, input_key_values, fp16_storage=True)
        _assert_matches(prediction, expected_outputs, atol, rtol, also_compare_shapes,
                        allow_mismatch_ratio)
    return prediction


def _assert_matches(prediction, expected_outputs, atol, rtol, also_compare_shapes,
                    allow_mismatch_ratio) -> None:
    for name, expected in expected_outputs.items():
        actual = prediction[name]
        expected = np.asarray(expected)
        if also_compare_shapes:
            assert actual.shape == expected.shape, f"{name}: {actual.shape} vs {expected.shape}"
        close = np.isclose(actual, expected, atol=atol, rtol=rtol)
        if (~close).sum() > allow_mismatch_ratio * expected.size:
            np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)


def pytest_configure(config):
    import coremltools as ct
    import coremltools.converters.mil.mil.ops.tests.testing_utils as op_testing
    import coremltools.converters.mil.testing_utils as testing

    testing.compare_backend = _compare_backend
    op_testing.compare_backend = _compare_backend
    ct.models.MLModel.predict = lambda self, data, state=None: _predict(self, data)
    is_controller = bool(getattr(config.option, "numprocesses", None))
    _RECORDING[0] = bool(os.environ.get("PYTEST_XDIST_WORKER")) or not is_controller


def _function_id(item) -> str:
    return item.nodeid.split("[", 1)[0]


def pytest_collection_modifyitems(config, items):
    limit = int(os.environ.get("SDBUILD_CONFORMANCE_PER_TEST", "0"))
    if limit <= 0:
        return
    by_function = defaultdict(list)
    for item in items:
        by_function[_function_id(item)].append(item)
    keep = set()
    for group in by_function.values():
        ranked = sorted(group, key=lambda i: hashlib.sha1(i.nodeid.encode()).hexdigest())
        keep.update(id(i) for i in ranked[:limit])
    selected = [i for i in items if id(i) in keep]
    config.hook.pytest_deselected(items=[i for i in items if id(i) not in keep])
    items[:] = selected


def pytest_runtest_setup(item):
    _CURRENT[0] = item.nodeid


def pytest_runtest_logreport(report):
    if not _RECORDING[0]:
        return
    if report.when == "call" or report.outcome != "passed":
        evaluated = report.nodeid in _EVALUATED
        crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
        if report.failed and crash and "UnsupportedOpError" in crash.message:
            outcome = "unsupported"
        elif not evaluated or report.skipped:
            outcome = "not_evaluated"
        else:
            outcome = "passed" if report.passed else "failed"
        previous = _OUTCOMES.get(report.nodeid, {}).get("outcome")
        if previous not in ("failed", "unsupported"):
            _OUTCOMES[report.nodeid] = {
                "outcome": outcome,
                "message": "" if report.passed else str(report.longrepr)[-1500:],
            }


def pytest_sessionfinish(session):
    path = os.environ.get("SDBUILD_CONFORMANCE_REPORT")
    if not path:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"{path}.{worker}.json", "w") as handle:
        json.dump(_OUTCOMES, handle)
