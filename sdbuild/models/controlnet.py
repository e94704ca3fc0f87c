"""ControlNet in the Neural Engine layout: the UNet's encoder half plus the conditioning image
embedding and the 1x1 "zero" convolutions that produce ``additional_residual_{i}``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from sdbuild.models.layers import conv1x1, conv3x3
from sdbuild.models.unet import UNetEncoder

DEFAULT_CONDITIONING_CHANNELS = (16, 32, 96, 256)


class ConditioningEmbedding(nn.Module):
    """diffusers' ``ControlNetConditioningEmbedding``: the 8x-larger control image -> latent grid."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], out_channels: int):
        super().__init__()
        self.conv_in = conv3x3(in_channels, channels[0])
        self.blocks = nn.ModuleList()
        for current, following in zip(channels[:-1], channels[1:]):
            self.blocks.append(conv3x3(current, current))
            self.blocks.append(conv3x3(current, following, stride=2))
        self.conv_out = conv3x3(channels[-1], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(x))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


class ControlNet(UNetEncoder):
    """forward(sample, timestep, encoder_hidden_states[, time_ids, text_embeds], controlnet_cond)
    -> (additional_residual_0, ..., additional_residual_N); conditioning scale 1."""

    def __init__(self, config: Mapping, attention: str):
        super().__init__(config, attention)
        channels = list(config["block_out_channels"])
        self.bgr = config.get("controlnet_conditioning_channel_order", "rgb") == "bgr"
        self.controlnet_cond_embedding = ConditioningEmbedding(
            config.get("conditioning_channels", 3),
            tuple(config.get("conditioning_embedding_out_channels") or DEFAULT_CONDITIONING_CHANNELS),
            channels[0])
        skip_channels = [channels[0]]
        for i, block in enumerate(self.down_blocks):
            skip_channels += [channels[i]] * (len(block.resnets) + (block.downsamplers is not None))
        self.controlnet_down_blocks = nn.ModuleList(conv1x1(c, c) for c in skip_channels)
        self.controlnet_mid_block = conv1x1(channels[-1], channels[-1])

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor, *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_latent_size(sample)
        *conditioning, cond = extra
        temb = self.embed(timestep, tuple(conditioning))
        if self.bgr:
            cond = cond.flip(1)
        x = self.conv_in(sample) + self.controlnet_cond_embedding(cond)
        x, skips = self.encode(x, temb, encoder_hidden_states)
        x = self.mid_block(x, temb, encoder_hidden_states)
        residuals = [conv(skip) for conv, skip in zip(self.controlnet_down_blocks, skips)]
        return (*residuals, self.controlnet_mid_block(x))
