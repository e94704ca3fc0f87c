"""Axis and broadcasting helpers shared by the kernels."""

from __future__ import annotations

import torch


def positive_axis(axis: int, rank: int) -> int:
    """A possibly negative axis (or index) counted from the front."""
    return axis + rank if axis < 0 else axis


def per_channel(param: torch.Tensor, rank: int) -> torch.Tensor:
    """A per-channel (axis 1) parameter shaped to broadcast against a rank-``rank`` tensor."""
    return param.reshape((1, -1) + (1,) * (rank - 2))
