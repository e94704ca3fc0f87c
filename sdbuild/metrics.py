"""Numerical comparison used by every correctness gate (same formula as Apple's reference)."""

import numpy as np


def psnr(reference, candidate) -> float:
    """PSNR = 20 log10((max|ref| + 1e-5) / (RMSE + 1e-10)), in dB, computed in float64."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    rmse = float(np.sqrt(np.mean((ref - cand) ** 2)))
    return float(20.0 * np.log10((np.abs(ref).max() + 1e-5) / (rmse + 1e-10)))
