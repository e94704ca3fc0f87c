"""Convolutions (1-D, 2-D, 3-D) and transposed convolutions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdbuild.evaluator.ops.linear import float_operand
from sdbuild.evaluator.registry import Args, register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _same_split(total: int, lower: bool) -> tuple[int, int]:
    """'same' puts the odd padding cell after the data, 'same_lower' before it."""
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def conv_padding(a: Args, spatial: tuple[int, ...], kernel: tuple[int, ...],
                 strides: list[int], dilations: list[int]) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dimension for a conv or pool op."""
    pad_type = a.get("pad_type", "valid")
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    if pad_type == "custom":
        pads = a.ints("pad") or [0] * (2 * len(spatial))
        return [(pads[2 * i], pads[2 * i + 1]) for i in range(len(spatial))]
    if pad_type in ("same", "same_lower"):
        result = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            effective = (k - 1) * d + 1
            total = max((math.ceil(size / s) - 1) * s + effective - size, 0)
            result.append(_same_split(total, pad_type == "same_lower"))
        return result
    raise a.unsupported(f"pad_type {pad_type}")


def _torch_padding(x: torch.Tensor, pads: list[tuple[int, int]], value: float = 0.0):
    """Symmetric padding goes to the torch op; asymmetric padding is applied explicitly."""
    if all(b == e for b, e in pads):
        return x, [b for b, _ in pads]
    flat = [p for b, e in reversed(pads) for p in (b, e)]
    return F.pad(x, flat, value=value), [0] * len(pads)


def _conv_operands(a: Args) -> tuple[torch.Tensor, torch.Tensor, int, list[int], list[int]]:
    """(x, weight, spatial dims, strides, dilations), with MIL's defaults of 1."""
    x, weight = a.tensor("x"), float_operand(a, "weight")
    dims = x.dim() - 2
    return x, weight, dims, a.ints("strides") or [1] * dims, a.ints("dilations") or [1] * dims


@register("conv")
def conv(a: Args) -> torch.Tensor:
    x, weight, dims, strides, dilations = _conv_operands(a)
    pads = conv_padding(a, tuple(x.shape[2:]), tuple(weight.shape[2:]), strides, dilations)
    x, padding = _torch_padding(x, pads)
    return _CONV[dims](x, weight, float_operand(a, "bias"), strides, padding, dilations,
                       a.get("groups", 1))


@register("conv_transpose")
def conv_transpose(a: Args) -> torch.Tensor:
    x, weight, dims, strides, dilations = _conv_operands(a)
    groups = a.get("groups", 1)
    full = _CONV_TRANSPOSE[dims](x, weight, None, strides, 0, 0, groups, dilations)
    spatial_in = x.shape[2:]
    pad_type = a.get("pad_type", "valid")
    output_shape = a.ints("output_shape")
    crops = []
    for i in range(dims):
        size = full.shape[2 + i]
        if pad_type == "custom":
            pads = a.ints("pad") or [0] * (2 * dims)
            begin, end = pads[2 * i], pads[2 * i + 1]
        elif pad_type in ("same", "same_lower"):
            begin, end = _same_split(max(size - spatial_in[i] * strides[i], 0),
                                     pad_type == "same_lower")
        elif pad_type == "valid":
            begin, end = 0, 0
        else:
            raise a.unsupported(f"pad_type {pad_type}")
        target = output_shape[2 + i] if output_shape else size - begin - end
        crops.append((begin, target))
    out = full
    for i, (begin, target) in enumerate(crops):
        available = out.shape[2 + i] - begin
        out = out.narrow(2 + i, begin, min(available, target))
        if available < target:
            # Positions past the full output receive no input contribution: zeros (+ bias).
            widths = [0, 0] * (dims - 1 - i) + [0, target - available]
            out = F.pad(out, widths)
    if "bias" in a:
        out = out + float_operand(a, "bias").reshape((1, -1) + (1,) * dims)
    return out
