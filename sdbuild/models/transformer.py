"""diffusers' ``Transformer2DModel`` / ``BasicTransformerBlock`` in the (B, C, 1, S) layout."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sdbuild.models.attention import Attention
from sdbuild.models.layers import ChannelLayerNorm, conv1x1

FEED_FORWARD_MULT = 4
# diffusers hard-codes both, whatever the UNet's norm_eps.
GROUP_NORM_EPS = 1e-6
LAYER_NORM_EPS = 1e-5


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = conv1x1(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """``ff.net.0`` (GEGLU) and ``ff.net.2`` (output projection); ``net.1`` is dropout."""

    def __init__(self, dim: int):
        super().__init__()
        inner = dim * FEED_FORWARD_MULT
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), conv1x1(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention on the text, feed-forward; pre-norm residuals."""

    def __init__(self, dim: int, heads: int, context_dim: int, attention: str):
        super().__init__()
        head_dim = dim // heads
        self.norm1 = ChannelLayerNorm(dim, LAYER_NORM_EPS)
        self.attn1 = Attention(dim, None, heads, head_dim, attention)
        self.norm2 = ChannelLayerNorm(dim, LAYER_NORM_EPS)
        self.attn2 = Attention(dim, context_dim, heads, head_dim, attention)
        self.norm3 = ChannelLayerNorm(dim, LAYER_NORM_EPS)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """GroupNorm, 1x1 projection in, ``depth`` transformer blocks over the H*W tokens, projection
    out, residual. diffusers' linear and convolutional projections (SD 2.x vs 1.x) are the same
    1x1 convolution here."""

    def __init__(self, channels: int, heads: int, depth: int, context_dim: int, groups: int,
                 attention: str):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS)
        self.proj_in = conv1x1(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(channels, heads, context_dim, attention) for _ in range(depth))
        self.proj_out = conv1x1(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.proj_in(self.norm(x)).reshape(batch, channels, 1, height * width)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return self.proj_out(tokens).reshape(batch, channels, height, width) + x
