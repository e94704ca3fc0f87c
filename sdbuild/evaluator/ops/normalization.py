"""Normalization ops: layer, batch, instance, L2 and local-response normalization."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdbuild.evaluator.ops.layout import per_channel
from sdbuild.evaluator.registry import Args, register


@register("layer_norm")
def layer_norm(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    rank = x.dim()
    axes = a.ints("axes")
    axes = sorted(ax + rank if ax < 0 else ax for ax in (axes if axes is not None else range(rank)))
    gamma = a.tensor("gamma") if "gamma" in a else None
    beta = a.tensor("beta") if "beta" in a else None
    eps = a.get("epsilon", 1e-5)
    if axes == list(range(rank - len(axes), rank)):
        # Trailing axes: torch's fused kernel.
        return F.layer_norm(x, x.shape[rank - len(axes):], gamma, beta, eps)
    mean = x.mean(dim=axes, keepdim=True)
    var = (x - mean).square().mean(dim=axes, keepdim=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    normalized_shape = [x.shape[i] if i in axes else 1 for i in range(rank)]
    if gamma is not None:
        out = out * gamma.reshape(normalized_shape)
    if beta is not None:
        out = out + beta.reshape(normalized_shape)
    return out


@register("batch_norm")
def batch_norm(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    gamma = a.tensor("gamma") if "gamma" in a else None
    beta = a.tensor("beta") if "beta" in a else None
    return F.batch_norm(x, a.tensor("mean"), a.tensor("variance"), gamma, beta, False, 0.0,
                        a.get("epsilon", 1e-5))


@register("instance_norm")
def instance_norm(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    axes = list(range(2, x.dim()))
    mean = x.mean(dim=axes, keepdim=True)
    var = (x - mean).square().mean(dim=axes, keepdim=True)
    out = (x - mean) * torch.rsqrt(var + a.get("epsilon", 1e-5))
    if "gamma" in a:
        out = out * per_channel(a.tensor("gamma"), x.dim())
    if "beta" in a:
        out = out + per_channel(a.tensor("beta"), x.dim())
    return out


@register("l2_norm")
def l2_norm(a: Args) -> torch.Tensor:
    """Each batch item (all but the last three dimensions) is divided by its L2 norm."""
    x = a.tensor("x")
    flat = x.reshape(x.shape[: x.dim() - 3] + (-1,))
    norm = torch.sqrt(flat.square().sum(dim=-1, keepdim=True) + a.get("epsilon", 1e-6))
    return (flat / norm).reshape(x.shape)


@register("local_response_norm")
def local_response_norm(a: Args) -> torch.Tensor:
    """x / (k + alpha/size * sum of x^2 over channels c-h..c+h)^beta with h = (size-1)//2.

    Channels are the third dimension from the end (rank 3 is C, H, W; rank 4 is N, C, H, W), and
    the window is symmetric even for an even ``size`` (torch's own op shifts it instead).
    """
    x = a.tensor("x")
    size = a.get("size")
    half = (size - 1) // 2
    axis = x.dim() - 3
    channels = x.shape[axis]
    squares = F.pad(x.square().movedim(axis, -1), (half, half)).movedim(-1, axis)
    window_sum = sum(squares.narrow(axis, i, channels) for i in range(2 * half + 1))
    scale = a.get("k", 1.0) + a.get("alpha", 1e-4) / size * window_sum
    return x / scale.pow(a.get("beta", 0.75))
