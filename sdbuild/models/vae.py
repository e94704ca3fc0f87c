"""VAE halves as the reference converts them.

Latent scaling stays with the runner (as in Apple's pipeline and Swift package): the decoder
expects ``z = latents / scaling_factor`` and the runner multiplies encoder samples by it.
"""

from __future__ import annotations

import torch
from torch import nn


def _optional(module: nn.Module | None) -> nn.Module:
    """Some VAEs have no quant convs (``use_quant_conv=False``)."""
    return module if module is not None else nn.Identity()


class VAEDecoder(nn.Module):
    """``z`` (1, C, h, w), already divided by the latent scaling factor -> ``image`` in [-1, 1]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.post_quant_conv = _optional(getattr(vae, "post_quant_conv", None))
        self.decoder = vae.decoder

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.decoder(self.post_quant_conv(z)),)


class VAEEncoder(nn.Module):
    """``x`` (1, 3, H, W) in [-1, 1] -> ``latent``: the moments (mean, log-variance) stacked on the
    channel axis, (1, 2C, h, w). The runner samples ``mean + exp(logvar / 2) * noise`` and
    multiplies by the latent scaling factor."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = _optional(getattr(vae, "quant_conv", None))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.quant_conv(self.encoder(x)),)
