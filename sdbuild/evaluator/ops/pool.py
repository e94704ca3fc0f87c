"""Pooling ops (average, max, L2) over 1-3 spatial dimensions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdbuild.evaluator.ops.conv import conv_padding
from sdbuild.evaluator.registry import Args, register

_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _windows(a: Args, x: torch.Tensor):
    """Kernel, strides and the (before, after) padding per spatial dimension.

    ``ceil_mode`` output sizes are reached by extra padding after the data, which no window
    counts as real input.
    """
    dims = x.dim() - 2
    kernel = a.ints("kernel_sizes")
    strides = a.ints("strides") or [1] * dims
    pads = conv_padding(a, tuple(x.shape[2:]), tuple(kernel), strides, [1] * dims)
    extra = []
    for size, k, s, (before, after) in zip(x.shape[2:], kernel, strides, pads):
        span = size + before + after - k
        out = span // s + 1
        if a.get("ceil_mode", False):
            out = math.ceil(span / s) + 1
            if (out - 1) * s >= size + before:
                out -= 1
        extra.append(max(0, (out - 1) * s + k - (size + before + after)))
    return kernel, strides, pads, extra


def _pad(x: torch.Tensor, pads, extra, value: float) -> torch.Tensor:
    flat = [p for (b, e), x_ in zip(reversed(pads), reversed(extra)) for p in (b, e + x_)]
    return F.pad(x, flat, value=value)


@register("max_pool")
def max_pool(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    kernel, strides, pads, extra = _windows(a, x)
    return _MAX[len(kernel)](_pad(x, pads, extra, -math.inf), kernel, strides)


def _window_sum(x: torch.Tensor, kernel, strides) -> torch.Tensor:
    return _AVG[len(kernel)](x, kernel, strides) * math.prod(kernel)


@register("avg_pool")
def avg_pool(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    kernel, strides, pads, extra = _windows(a, x)
    total = _window_sum(_pad(x, pads, extra, 0.0), kernel, strides)
    ones = torch.ones((1, 1) + x.shape[2:], dtype=x.dtype)
    if a.get("exclude_padding_from_average", False):
        counted = _pad(ones, pads, extra, 0.0)
    else:
        # User padding counts, the ceil_mode extension does not.
        counted = _pad(_pad(ones, pads, [0] * len(pads), 1.0), [(0, 0)] * len(pads), extra, 0.0)
    return total / _window_sum(counted, kernel, strides)


@register("l2_pool")
def l2_pool(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    kernel, strides, pads, extra = _windows(a, x)
    return _window_sum(_pad(x.square(), pads, extra, 0.0), kernel, strides).sqrt()
