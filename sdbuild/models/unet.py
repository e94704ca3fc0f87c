"""The UNet (and the encoder half it shares with ControlNet) in the Neural Engine layout.

Built from a diffusers ``UNet2DConditionModel`` config; loads that model's state dict unchanged
(Linear weights viewed as 1x1 convolutions). Text states enter as (B, D, 1, S), the layout the
attention layers consume directly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from sdbuild.errors import SdbuildError
from sdbuild.models.attention import Attention
from sdbuild.models.layers import (
    TimestepEmbedding, as_channels, conv3x3, load_diffusers_weights, sinusoidal_embedding,
)
from sdbuild.models.unet_blocks import BlockSettings, DownBlock, MidBlock, UpBlock

CROSS_ATTENTION_BLOCKS = {"CrossAttnDownBlock2D", "CrossAttnUpBlock2D"}
PLAIN_BLOCKS = {"DownBlock2D", "UpBlock2D"}
# Config values this implementation reproduces; anything else would silently compute something
# different, so it is refused.
SUPPORTED_SETTINGS = {
    "act_fn": ("silu",),
    "addition_embed_type": (None, "text_time"),
    "attention_type": ("default",),
    "center_input_sample": (False,),
    "class_embed_type": (None,),
    "controlnet_conditioning_channel_order": ("rgb", "bgr"),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "dual_cross_attention": (False,),
    "encoder_hid_dim": (None,),
    "global_pool_conditions": (False,),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "num_class_embeds": (None,),
    "only_cross_attention": (False,),
    "resnet_time_scale_shift": ("default",),
    "reverse_transformer_layers_per_block": (None,),  # per-layer depths: no SD/SDXL UNet uses them
    "time_cond_proj_dim": (None,),
    "time_embedding_type": ("positional",),
    "timestep_post_act": (None,),
}


def _per_block(value, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def check_unet_config(config: Mapping) -> None:
    """Raise SdbuildError for UNet/ControlNet configs this implementation does not reproduce."""
    for key, allowed in SUPPORTED_SETTINGS.items():
        if key in config and config[key] not in allowed:
            raise SdbuildError(
                f"unsupported UNet setting {key}={config[key]!r} (supported: {allowed})",
                "use a Stable Diffusion 1.x, 2.x or SDXL UNet",
            )
    depths = config.get("transformer_layers_per_block", 1)
    if any(not isinstance(depth, int) for depth in _per_block(depths, 1)):
        raise SdbuildError(f"unsupported UNet per-layer transformer depths {depths!r}",
                           "use one transformer depth per block, as SD 1.x, 2.x and SDXL do")
    known = CROSS_ATTENTION_BLOCKS | PLAIN_BLOCKS
    for key in ("down_block_types", "up_block_types"):
        unknown = sorted(set(config.get(key, ())) - known)
        if unknown:
            raise SdbuildError(f"unsupported UNet block type(s) {unknown}",
                               f"supported: {sorted(known)}")


class UNetEncoder(nn.Module):
    """Embeddings, conv_in, down blocks and mid block: what the UNet and ControlNet share."""

    def __init__(self, config: Mapping, attention: str):
        super().__init__()
        check_unet_config(config)
        channels = list(config["block_out_channels"])
        count = len(channels)
        self.down_factor = 2 ** (count - 1)
        self.heads = _per_block(config.get("num_attention_heads") or config["attention_head_dim"], count)
        self.depths = _per_block(config.get("transformer_layers_per_block", 1), count)
        self.layers = _per_block(config["layers_per_block"], count)
        self.flip_sin_to_cos = config["flip_sin_to_cos"]
        self.freq_shift = config["freq_shift"]
        self.is_xl = config.get("addition_embed_type") == "text_time"
        temb = config.get("time_embedding_dim") or channels[0] * 4
        self.settings = BlockSettings(groups=config["norm_num_groups"], eps=config["norm_eps"],
                                      temb_channels=temb, context_dim=config["cross_attention_dim"],
                                      attention=attention)

        self.conv_in = conv3x3(config["in_channels"], channels[0])
        self.time_embedding = TimestepEmbedding(channels[0], temb)
        if self.is_xl:
            self.add_time_channels = config["addition_time_embed_dim"]
            self.add_embedding = TimestepEmbedding(config["projection_class_embeddings_input_dim"], temb)
        self.down_blocks = nn.ModuleList()
        for i, block_type in enumerate(config["down_block_types"]):
            self.down_blocks.append(DownBlock(
                channels[max(i - 1, 0)], channels[i], self.layers[i], self.settings,
                heads=self.heads[i] if block_type in CROSS_ATTENTION_BLOCKS else None,
                depth=self.depths[i], downsample=i < count - 1,
                padding=config["downsample_padding"]))
        self.mid_block = MidBlock(channels[-1], self.settings, heads=self.heads[-1],
                                  depth=self.depths[-1],
                                  output_scale=config["mid_block_scale_factor"])

    def embed(self, timestep: torch.Tensor, conditioning: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Time embedding (B, T, 1, 1); SDXL adds the (time_ids, text_embeds) embedding."""
        t = sinusoidal_embedding(timestep, self.conv_in.out_channels, self.flip_sin_to_cos,
                                 self.freq_shift)
        emb = self.time_embedding(as_channels(t))
        if self.is_xl:
            time_ids, text_embeds = conditioning
            ids = sinusoidal_embedding(time_ids.flatten(), self.add_time_channels,
                                       self.flip_sin_to_cos, self.freq_shift)
            added = torch.cat([text_embeds, ids.reshape(time_ids.shape[0], -1)], dim=1)
            emb = emb + self.add_embedding(as_channels(added))
        return emb

    def check_latent_size(self, sample: torch.Tensor) -> None:
        height, width = sample.shape[-2:]
        if height % self.down_factor or width % self.down_factor:
            raise SdbuildError(
                f"latent size {height}x{width} is not divisible by {self.down_factor}",
                f"choose a latent size that is a multiple of {self.down_factor} "
                f"(image size a multiple of {8 * self.down_factor})")

    def encode(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Down blocks from the conv_in output -> (down output, skip connections)."""
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context)
            skips += block_skips
        return x, skips

    @property
    def conditioning_count(self) -> int:
        """SDXL's time_ids and text_embeds follow encoder_hidden_states."""
        return 2 if self.is_xl else 0

    @classmethod
    def from_diffusers(cls, model: nn.Module, attention: str, **kwargs) -> nn.Module:
        """Built without allocating (meta device), then given ``model``'s weights in place."""
        with torch.device("meta"):
            module = cls(model.config, attention, **kwargs)
        load_diffusers_weights(module, model.state_dict())
        for layer in module.modules():
            if isinstance(layer, Attention):
                layer.fold_query_scale()
        return module.eval()


class UNet(UNetEncoder):
    """forward(sample, timestep, encoder_hidden_states[, time_ids, text_embeds]
    [, additional_residual_0..N]) -> (noise_pred,).

    With ``control_residuals`` (the "control-unet") the ControlNet outputs are added to the skip
    connections and the mid block output, as diffusers does."""

    def __init__(self, config: Mapping, attention: str, control_residuals: bool = False):
        super().__init__(config, attention)
        self.control_residuals = control_residuals
        channels = list(config["block_out_channels"])
        up_channels = channels[::-1]
        up_heads, up_layers, up_depths = self.heads[::-1], self.layers[::-1], self.depths[::-1]
        self.up_blocks = nn.ModuleList()
        for i, block_type in enumerate(config["up_block_types"]):
            self.up_blocks.append(UpBlock(
                up_channels[min(i + 1, len(channels) - 1)], up_channels[max(i - 1, 0)],
                up_channels[i], up_layers[i] + 1, self.settings,
                heads=up_heads[i] if block_type in CROSS_ATTENTION_BLOCKS else None,
                depth=up_depths[i],
                upsample=i < len(channels) - 1))
        self.conv_norm_out = nn.GroupNorm(config["norm_num_groups"], channels[0], eps=config["norm_eps"])
        self.conv_out = conv3x3(channels[0], config["out_channels"])

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor, *extra: torch.Tensor) -> tuple[torch.Tensor]:
        self.check_latent_size(sample)
        conditioning, residuals = extra[:self.conditioning_count], extra[self.conditioning_count:]
        temb = self.embed(timestep, conditioning)
        x, skips = self.encode(self.conv_in(sample), temb, encoder_hidden_states)
        x = self.mid_block(x, temb, encoder_hidden_states)
        if self.control_residuals:
            skips = [skip + residual for skip, residual in zip(skips, residuals[:-1])]
            x = x + residuals[-1]
        for block in self.up_blocks:
            x = block(x, skips, temb, encoder_hidden_states)
        return (self.conv_out(F.silu(self.conv_norm_out(x))),)
