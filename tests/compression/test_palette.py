"""The seeded k-means palettes every kmeans preset and the mixed-bit analysis share."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from sdbuild.palette import kmeans_palette, palettized


def weights(seed: int = 0, size: int = 20_000, dtype=np.float16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.05 * rng.standard_normal(size)).astype(dtype)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.mark.parametrize("nbits", [1, 2, 4, 6, 8])
def test_palette_shape_order_and_indices(nbits):
    w = weights()
    lut, indices = kmeans_palette(w, nbits, seed=0)
    assert lut.shape == (1 << nbits,) and lut.dtype == np.float16
    assert np.all(np.diff(lut.astype(np.float64)) >= 0), "palette in ascending order"
    assert indices.shape == (w.size,) and indices.dtype == np.uint8 and indices.max() < 1 << nbits
    # Every element maps to its nearest palette entry (as stored, float16).
    distance = np.abs(w.astype(np.float64)[:, None] - lut.astype(np.float64)[None, :])
    assert np.allclose(distance[np.arange(w.size), indices], distance.min(axis=1))


def test_same_seed_same_bytes_and_the_seed_matters():
    w = weights()
    first, second = kmeans_palette(w, 4, seed=3), kmeans_palette(w.copy(), 4, seed=3)
    assert first[0].tobytes() == second[0].tobytes() and first[1].tobytes() == second[1].tobytes()
    luts = {kmeans_palette(w, 6, seed=s)[0].tobytes() for s in range(4)}
    assert len(luts) > 1, "k-means++ initialisation follows quantization.seed"


def test_error_falls_with_more_bits():
    w = weights()
    errors = [mse(w, palettized(w, n, seed=0)) for n in (1, 2, 4, 6, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 1000


@pytest.mark.parametrize("nbits", [2, 4, 6])
def test_as_good_as_scikit_learn_kmeans(nbits):
    w = weights(seed=1, size=8_000)
    ours = mse(w, palettized(w, nbits, seed=0))
    model = KMeans(1 << nbits, n_init=1, random_state=0).fit(w.astype(np.float64)[:, None])
    theirs = mse(w, model.cluster_centers_[model.labels_, 0].astype(np.float16))
    assert ours <= theirs * 1.05


def test_few_distinct_values_are_kept_exactly():
    w = np.array([0.5, -0.25, 0.5, 0.125, -0.25] * 100, dtype=np.float16)
    assert np.array_equal(palettized(w, 2, seed=0), w)


def test_float32_weights_and_shapes_are_supported():
    w = weights(size=4_096, dtype=np.float32).reshape(8, 8, 8, 8)
    result = palettized(w, 4, seed=0)
    assert result.shape == w.shape and result.dtype == np.float32 and len(np.unique(result)) <= 16
