"""Building blocks of the Neural Engine layout: activations are (B, C, 1, S) or (B, C, H, W).

Every linear layer becomes a 1x1 convolution and layer norm runs over the channel axis, the data
format the Neural Engine handles best (Apple's "Deploying Transformers on the Apple Neural
Engine"). Module attribute names follow diffusers so its state dicts load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def conv1x1(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """A linear layer in the (B, C, 1, S) layout; loads a Linear's (out, in) weight as (out, in, 1, 1)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=padding)


class ChannelLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the channel axis of a (B, C, 1, S) tensor."""

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(dim=1, keepdim=True)
        out = centered * torch.rsqrt(centered.pow(2).mean(dim=1, keepdim=True) + self.eps)
        if self.weight is None:
            return out
        return out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def sinusoidal_embedding(values: torch.Tensor, channels: int, flip_sin_to_cos: bool,
                         freq_shift: float) -> torch.Tensor:
    """diffusers' timestep embedding of a 1-D tensor -> (N, channels)."""
    half = channels // 2
    exponent = torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / (half - freq_shift))
    angles = values.float()[:, None] * torch.exp(exponent)[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    return F.pad(emb, (0, channels % 2))


class TimestepEmbedding(nn.Module):
    """diffusers' ``TimestepEmbedding`` on (B, C, 1, 1): linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear_1 = conv1x1(in_channels, out_channels)
        self.linear_2 = conv1x1(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def as_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C, 1, 1)."""
    return x[:, :, None, None]


def load_diffusers_weights(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load a diffusers state dict, viewing Linear weights as 1x1 conv weights.

    Every key must match both ways (strict), so a layout mismatch fails loudly. Tensors are
    assigned, not copied (views share storage): converting a real model needs no second copy of
    its weights in memory.
    """
    own_shapes = {k: v.shape for k, v in module.state_dict(keep_vars=True).items()}
    weights = {}
    for key, value in state_dict.items():
        shape = own_shapes.get(key)
        weights[key] = value.view(shape) if shape is not None and value.dim() == 2 and len(shape) == 4 else value
    module.load_state_dict(weights, strict=True, assign=True)
    return module
