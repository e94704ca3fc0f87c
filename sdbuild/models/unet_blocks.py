"""The UNet's resnet, down, mid and up blocks (diffusers' names, so state dicts load unchanged)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sdbuild.models.layers import conv1x1, conv3x3
from sdbuild.models.transformer import Transformer2D


@dataclass(frozen=True)
class BlockSettings:
    """What every block of one UNet (or ControlNet) shares."""

    groups: int
    eps: float
    temb_channels: int
    context_dim: int
    attention: str  # attention implementation name


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, settings: BlockSettings,
                 output_scale: float = 1.0):
        super().__init__()
        self.output_scale = output_scale
        self.norm1 = nn.GroupNorm(settings.groups, in_channels, eps=settings.eps)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.time_emb_proj = conv1x1(settings.temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(settings.groups, out_channels, eps=settings.eps)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.conv_shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1)
                              if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``temb`` is (B, T, 1, 1) and broadcasts over the feature map."""
        h = self.conv1(F.silu(self.norm1(x))) + self.time_emb_proj(F.silu(temb))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = shortcut + h
        return out if self.output_scale == 1.0 else out / self.output_scale


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _transformers(count: int, channels: int, heads: int, depth: int,
                  settings: BlockSettings) -> nn.ModuleList:
    return nn.ModuleList(
        Transformer2D(channels, heads, depth, settings.context_dim, settings.groups, settings.attention)
        for _ in range(count))


class DownBlock(nn.Module):
    """``DownBlock2D`` or, with ``heads``, ``CrossAttnDownBlock2D``. Returns the output and the
    skip connections it contributes (one per resnet, plus the downsampled output)."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, settings: BlockSettings, *,
                 heads: int | None, depth: int, downsample: bool, padding: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, settings)
            for i in range(layers))
        self.attentions = (_transformers(layers, out_channels, heads, depth, settings)
                           if heads else None)
        self.downsamplers = nn.ModuleList([Downsample(out_channels, padding)]) if downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor,
                context: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """``UNetMidBlock2DCrossAttn``: resnet, transformer(s), resnet."""

    def __init__(self, channels: int, settings: BlockSettings, *, heads: int, depth: int,
                 output_scale: float):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, settings, output_scale) for _ in range(2))
        self.attentions = _transformers(1, channels, heads, depth, settings)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class UpBlock(nn.Module):
    """``UpBlock2D`` or, with ``heads``, ``CrossAttnUpBlock2D``; consumes skips last-first."""

    def __init__(self, in_channels: int, prev_channels: int, out_channels: int, layers: int,
                 settings: BlockSettings, *, heads: int | None, depth: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList()
        for i in range(layers):
            skip_channels = in_channels if i == layers - 1 else out_channels
            resnet_in = prev_channels if i == 0 else out_channels
            self.resnets.append(ResnetBlock(resnet_in + skip_channels, out_channels, settings))
        self.attentions = (_transformers(layers, out_channels, heads, depth, settings)
                           if heads else None)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x
