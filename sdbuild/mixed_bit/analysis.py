"""The mixed-bit pre-analysis: each UNet layer's output PSNR at each palette bit width."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdbuild.config.compression import PALETTE_NBITS
from sdbuild.contract import TEXT_SEQUENCE_LENGTH
from sdbuild.errors import SdbuildError
from sdbuild.metrics import psnr
from sdbuild.palette import palettized
from sdbuild.progress import bar

FLOAT_BITS = 16
Progress = Callable[[str], None]


@dataclass(frozen=True)
class AnalysisSettings:
    bit_widths: tuple[int, ...] = PALETTE_NBITS
    num_inputs: int = 2  # seeded (sample, timestep, text) sets, run as one batch
    input_seed: int = 0
    latent_size: int | None = None  # None: the UNet's sample_size
    weight_threshold: int = 2048  # layers with at most this many weights stay float16 (as in builds)
    palette_seed: int = 0  # must equal quantization.seed of the builds using the recipes


@dataclass
class LayerResult:
    name: str  # PyTorch module name, e.g. down_blocks.0.resnets.0.conv1
    elements: int
    psnr_db: dict[int, float]  # bit width -> UNet output PSNR with only this layer palettized


@dataclass
class Analysis:
    identity: str
    settings: AnalysisSettings
    layers: list[LayerResult]
    float_elements: int  # parameters not analysed: they stay float16 in every recipe


def palettizable_layers(unet: nn.Module, weight_threshold: int) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in unet.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.numel() > weight_threshold]


def analyse(unet: nn.Module, settings: AnalysisSettings, *, identity: str | None = None,
            cache_dir: Path | None = None, progress: Progress | None = None) -> Analysis:
    """Per-layer PSNR at each bit width. ``unet``'s weights are rounded to float16 in place.

    With ``cache_dir`` (a build cache, see `sdbuild cache`) a finished analysis is a cache entry
    keyed by the weights' ``identity`` (default: a digest of the weights) and the settings; an
    unfinished one is saved after every layer beside it and resumed from there.
    """
    from sdbuild.mixed_bit.store import AnalysisStore

    _check_settings(settings)
    identity = identity or weights_digest(unet)
    round_to_float16(unet)
    inputs = analysis_inputs(unet, settings)
    reference = run_unet(unet, inputs)
    layers = palettizable_layers(unet, settings.weight_threshold)
    if not layers:
        raise SdbuildError(f"the UNet has no conv/linear layer over {settings.weight_threshold} weights",
                           "lower --weight-threshold")
    store = AnalysisStore(cache_dir, identity, settings) if cache_dir is not None else None
    done = store.read() if store else {}
    results = []
    for index, (name, module) in enumerate(bar(layers, "mixed-bit layers"), start=1):
        if name not in done:
            done[name] = {n: _psnr_with(module, n, settings.palette_seed, unet, inputs, reference)
                          for n in settings.bit_widths}
            if store:
                store.save_progress(done)
        results.append(LayerResult(name, module.weight.numel(), done[name]))
        if progress:
            curve = " ".join(f"{n}b:{p:.1f}" for n, p in done[name].items())
            progress(f"[{index}/{len(layers)}] {name}: {curve} dB")
    if store:
        store.finish(done)
    analysed = sum(r.elements for r in results)
    total = sum(p.numel() for p in unet.parameters())
    return Analysis(identity, settings, results, total - analysed)


def weights_digest(module: nn.Module) -> str:
    """sha256 of the float16 weights and their names: the identity of a module's weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def round_to_float16(module: nn.Module) -> None:
    for param in module.parameters():
        param.copy_(param.to(torch.float16).to(param.dtype))


def analysis_inputs(unet: nn.Module, settings: AnalysisSettings) -> dict[str, torch.Tensor]:
    """Seeded UNet inputs in the diffusers layout, one batch item per input set."""
    config = unet.config
    size = settings.latent_size or config.sample_size
    batch = settings.num_inputs
    rng = np.random.default_rng(settings.input_seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    inputs = {
        "sample": normal(batch, config.in_channels, size, size),
        # Spread over the training range: sensitivity differs between early and late steps.
        "timestep": torch.linspace(999, 1, batch).round(),
        "encoder_hidden_states": normal(batch, TEXT_SEQUENCE_LENGTH, config.cross_attention_dim),
    }
    if config.addition_embed_type == "text_time":  # SDXL: pooled text and size conditioning
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": normal(batch, text_dim),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch),
        }
    return inputs


@torch.no_grad()
def run_unet(unet: nn.Module, inputs: dict) -> np.ndarray:
    return unet(**inputs, return_dict=False)[0].numpy()


@torch.no_grad()
def _psnr_with(module: nn.Module, nbits: int, seed: int, unet: nn.Module, inputs: dict,
               reference: np.ndarray) -> float:
    """UNet output PSNR with ``module``'s weight palettized to ``nbits``, then restored."""
    original = module.weight.detach().clone()
    try:
        palettize_(module, nbits, seed)
        return round(psnr(reference, run_unet(unet, inputs)), 3)
    finally:
        module.weight.copy_(original)


@torch.no_grad()
def palettize_(module: nn.Module, nbits: int, seed: int) -> None:
    weight = module.weight.detach().to(torch.float16).numpy()
    module.weight.copy_(torch.from_numpy(palettized(weight, nbits, seed).astype(np.float32)))


def _check_settings(settings: AnalysisSettings) -> None:
    bad = [n for n in settings.bit_widths if n not in PALETTE_NBITS]
    if bad or not settings.bit_widths:
        raise SdbuildError(f"bit widths {bad or 'none'} are not palette sizes", f"choose from {PALETTE_NBITS}")
    if settings.num_inputs < 1:
        raise SdbuildError("the analysis needs at least one input set", "use --num-inputs 1 or more")
