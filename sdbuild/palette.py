"""Seeded k-means palettes for weight tensors: what `quantization=kmeans*` ships.

Computed here rather than by coremltools' own k-means so that (1) the recipe's seed decides the
bytes, (2) the mixed-bit pre-analysis measures exactly the palettes a build ships, and (3) a
float16 tensor of millions of elements clusters its at most 65536 distinct values weighted by
their counts, which is exact and takes milliseconds, where coremltools would run scikit-learn
over every element (kmeans1d is not installed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

PALETTE_VERSION = 2  # bump when kmeans_palette changes its output


@dataclass(frozen=True)
class KMeansPalette:
    """coremltools ``lut_function``: a seeded k-means palette of 2**nbits entries."""

    nbits: int
    seed: int
    done: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)  # progress

    def __call__(self, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        palette = kmeans_palette(weight, self.nbits, self.seed)
        self.done()
        return palette


def kmeans_palette(weight: np.ndarray, nbits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(lut of 2**nbits entries in ascending order, weight.dtype; uint8 index per element)."""
    values, inverse, counts = _distinct_values(weight)
    size = 1 << nbits
    centers = values if len(values) <= size else _weighted_kmeans_1d(values, counts, size, seed)
    lut = np.zeros(size, dtype=weight.dtype)
    lut[: len(centers)] = centers
    # Assign against the palette as stored (rounded to weight.dtype), so indices are exact.
    stored = lut[: len(centers)].astype(np.float64)
    labels = _nearest_sorted(values, stored)
    return lut, labels[inverse].astype(np.uint8)


def palettized(weight: np.ndarray, nbits: int, seed: int) -> np.ndarray:
    """``weight`` with every element replaced by its palette entry (what a build ships)."""
    lut, indices = kmeans_palette(weight, nbits, seed)
    return lut[indices].reshape(weight.shape)


def _distinct_values(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct values (float64), each element's position among them, and their counts."""
    flat = weight.reshape(-1)
    if flat.dtype != np.float16:
        values, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        return values.astype(np.float64), inverse.reshape(-1), counts
    # float16 has 65536 bit patterns: a histogram of them is O(n), where sorting is O(n log n).
    codes = flat.view(np.uint16)
    histogram = np.bincount(codes, minlength=1 << 16)
    present = np.flatnonzero(histogram)
    values = present.astype(np.uint16).view(np.float16).astype(np.float64)
    order = np.argsort(values, kind="stable")
    position = np.empty(1 << 16, dtype=np.int64)
    position[present[order]] = np.arange(len(present))
    return values[order], position[codes], histogram[present[order]]


def _weighted_kmeans_1d(values: np.ndarray, counts: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Lloyd's k-means on sorted 1-D ``values`` weighted by ``counts``, k-means++ seeded.

    In 1-D every cluster is a run of the sorted values, so an iteration needs only the k-1 run
    boundaries and prefix sums: O(k log n) instead of O(n), which grouped palettes (one k-means
    per group of channels) call thousands of times."""
    rng = np.random.default_rng(seed)
    weights = counts.astype(np.float64)

    def draw(mass: np.ndarray) -> float:
        """A value drawn with probability proportional to ``mass``."""
        cumulative = np.cumsum(mass)
        return values[min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"), len(values) - 1)]

    centers = [draw(weights)]
    nearest = (values - centers[0]) ** 2
    for _ in range(1, k):
        centers.append(draw(weights * nearest))
        nearest = np.minimum(nearest, (values - centers[-1]) ** 2)
    centers = np.sort(np.array(centers))
    mass_before = np.concatenate([[0.0], np.cumsum(weights)])
    moment_before = np.concatenate([[0.0], np.cumsum(weights * values)])
    bounds = None
    for _ in range(300):
        # Cluster j holds values[bounds[j]:bounds[j + 1]]: those nearest centre j (ties go lower).
        midpoints = (centers[1:] + centers[:-1]) / 2
        new_bounds = np.concatenate([[0], np.searchsorted(values, midpoints, side="right"), [len(values)]])
        if bounds is not None and np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        mass = mass_before[bounds[1:]] - mass_before[bounds[:-1]]
        total = moment_before[bounds[1:]] - moment_before[bounds[:-1]]
        filled = mass > 0  # an emptied cluster keeps its centre
        centers[filled] = total[filled] / mass[filled]
        centers = np.sort(centers)
    return centers


def _nearest_sorted(values: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest of the ascending ``centers`` for each value."""
    midpoints = (centers[1:] + centers[:-1]) / 2
    return np.searchsorted(midpoints, values, side="left")
