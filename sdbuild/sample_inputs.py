"""Seeded example inputs for any component interface: used to trace and to verify.

Values are shaped like real traffic (token ids with start/end tokens, timesteps in the training
range, images in their value ranges) so that verification exercises the numerics a user will hit.
Inputs declared float16 are rounded to float16 here, so the PyTorch reference and the converted
model see exactly the same numbers.
"""

from __future__ import annotations

import numpy as np

from sdbuild.contract import Interface, TensorSpec

START_OF_TEXT, END_OF_TEXT = 49406, 49407


def sample_inputs(interface: Interface, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {spec.name: _sample(spec, rng) for spec in interface.inputs}


def _sample(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    shape = spec.shape
    if spec.name == "input_ids":
        ids = np.full(shape, END_OF_TEXT, dtype=np.float32)  # CLIP pads with end-of-text
        length = shape[1] // 3
        ids[:, 0] = START_OF_TEXT
        ids[:, 1:length] = rng.integers(0, 49405, size=(shape[0], length - 1))
        return ids
    if spec.name == "timestep":
        value = np.full(shape, rng.integers(1, 1000), dtype=np.float32)
    elif spec.name == "time_ids":
        # (original size, crop top-left, target size); the refiner's 5 end in an aesthetic score
        ids = [1024, 1024, 0, 0, 1024, 1024] if shape[1] == 6 else [1024, 1024, 0, 0, 6]
        value = np.tile(np.array(ids, dtype=np.float32), (shape[0], 1))
    elif spec.name in ("x", "controlnet_cond"):
        value = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    elif spec.name == "images":
        value = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
    elif spec.name == "adjustment":
        value = np.zeros(shape, dtype=np.float32)
    elif spec.name.startswith("additional_residual_"):
        value = (0.1 * rng.standard_normal(size=shape)).astype(np.float32)
    else:
        value = rng.standard_normal(size=shape).astype(np.float32)
    if spec.dtype == "float16":
        value = value.astype(np.float16).astype(np.float32)
    return value
