"""Layer plans from an analysis: the bit width of every analysed layer for a target average, and
the whole plan's PSNR measured against the gate a build will apply (`min_psnr`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sdbuild.config.compression import PALETTE_NBITS
from sdbuild.errors import SdbuildError
from sdbuild.metrics import psnr
from sdbuild.mixed_bit.analysis import (
    FLOAT_BITS, Analysis, AnalysisSettings, LayerResult, analysis_inputs, palettize_, run_unet,
)


@dataclass
class LayerPlan:
    target_bits: float
    layers: dict[str, int]
    avg_bits: float  # over all UNet parameters, the unanalysed ones at 16
    min_layer_psnr_db: float  # the common threshold every palettized layer meets
    psnr_db: float | None = None  # all of the plan at once, when measured


def choose_layer_plan(analysis: Analysis, target_bits: float) -> LayerPlan:
    """The plan with the highest common PSNR threshold whose average bits fit ``target_bits``."""
    thresholds = sorted({p for layer in analysis.layers for p in layer.psnr_db.values()}, reverse=True)
    for threshold in thresholds:
        layers = {layer.name: _fewest_bits(layer, threshold) for layer in analysis.layers}
        average = average_bits(analysis, layers)
        if average <= target_bits + 1e-9:
            return LayerPlan(target_bits, layers, round(average, 4), threshold)
    lowest = average_bits(analysis, {layer.name: min(layer.psnr_db) for layer in analysis.layers})
    raise SdbuildError(
        f"no layer plan averages {target_bits} bits: the fewest is {lowest:.2f} "
        f"({analysis.float_elements} unanalysed weights stay float16)",
        "pick a higher target, or analyse with lower bit widths / a lower weight threshold",
    )


def _fewest_bits(layer: LayerResult, threshold: float) -> int:
    return min((n for n, p in layer.psnr_db.items() if p >= threshold), default=FLOAT_BITS)


def average_bits(analysis: Analysis, layers: dict[str, int]) -> float:
    sizes = {layer.name: layer.elements for layer in analysis.layers}
    bits = sum(sizes[name] * n for name, n in layers.items()) + FLOAT_BITS * analysis.float_elements
    return bits / (sum(sizes.values()) + analysis.float_elements)


@torch.no_grad()
def measure_layer_plan(unet: nn.Module, plan: LayerPlan, settings: AnalysisSettings) -> float:
    """UNet output PSNR with the whole plan applied (``unet`` as `analyse` left it)."""
    inputs = analysis_inputs(unet, settings)
    reference = run_unet(unet, inputs)
    modules = dict(unet.named_modules())
    originals = {name: modules[name].weight.detach().clone() for name in plan.layers}
    try:
        for name, nbits in plan.layers.items():
            if nbits != FLOAT_BITS:
                palettize_(modules[name], nbits, settings.palette_seed)
        return round(psnr(reference, run_unet(unet, inputs)), 3)
    finally:
        for name, weight in originals.items():
            modules[name].weight.copy_(weight)


def write_layer_plan(plan: LayerPlan, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}_{plan.target_bits:.2f}.json"
    path.write_text(json.dumps(plan.layers, indent=1) + "\n")
    return path


def summary_table(plans: list[LayerPlan], gate_db: float) -> str:
    lines = ["| target bits | avg bits | layers at 1/2/4/6/8/16 bits | min layer PSNR dB | plan PSNR dB | written |",
             "|---|---|---|---|---|---|"]
    for p in plans:
        counts = "/".join(str(sum(1 for n in p.layers.values() if n == b)) for b in (*PALETTE_NBITS, FLOAT_BITS))
        measured = "-" if p.psnr_db is None else f"{p.psnr_db:.1f}"
        written = "yes" if meets_gate(p, gate_db) else f"no: under {gate_db:g} dB"
        lines.append(f"| {p.target_bits:.2f} | {p.avg_bits:.2f} | {counts} | {p.min_layer_psnr_db:.1f} | "
                     f"{measured} | {written} |")
    return "\n".join(lines)


def meets_gate(plan: LayerPlan, gate_db: float) -> bool:
    """Whether a build of ``plan`` can pass verification at ``gate_db`` (as measured here)."""
    return plan.psnr_db is not None and plan.psnr_db >= gate_db
