"""Resampling of the last two dimensions: upsample/resize (nearest and bilinear), crop."""

from __future__ import annotations

import math

import torch

from sdbuild.evaluator.registry import Args, register


def _grid(size_in: int, size_out: int, mode: str) -> torch.Tensor:
    """Sampling positions (in input coordinates) of each output cell, per MIL sampling mode."""
    i = torch.arange(size_out, dtype=torch.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if size_out == 1:
            points = torch.full((1,), (size_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0,
                                dtype=torch.float64)
        else:
            points = i * (size_in - 1) / (size_out - 1)
    elif mode == "DEFAULT":
        points = i * size_in / size_out
    elif mode == "OFFSET_CORNERS":
        delta = max(1, size_in - 1) / size_out
        points = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        spacing = size_in / size_out
        points = i * spacing + 0.5 * spacing - 0.5
    else:
        raise ValueError(f"unknown sampling mode {mode}")
    return points.clamp(0, size_in - 1)


def _interpolate_axis(x: torch.Tensor, dim: int, points: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``dim`` at fractional ``points``."""
    low = points.floor().long()
    high = (low + 1).clamp(max=x.shape[dim] - 1)
    weight = (points - low).to(torch.float32)
    shape = [1] * x.dim()
    shape[dim] = -1
    below, above = x.index_select(dim, low), x.index_select(dim, high)
    return below + (above - below) * weight.reshape(shape)


def bilinear(x: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    x = x if x.is_floating_point() else x.float()
    x = _interpolate_axis(x, x.dim() - 2, _grid(x.shape[-2], height, mode))
    return _interpolate_axis(x, x.dim() - 1, _grid(x.shape[-1], width, mode))


def nearest(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Output cell i reads input cell floor(i * in / out) on each axis."""
    for dim, size in ((x.dim() - 2, height), (x.dim() - 1, width)):
        index = (torch.arange(size, dtype=torch.float64) * x.shape[dim] / size).floor().long()
        x = x.index_select(dim, index.clamp(max=x.shape[dim] - 1))
    return x


def _scaled(a: Args, x: torch.Tensor) -> tuple[int, int]:
    return (math.floor(x.shape[-2] * a.get("scale_factor_height", 1)),
            math.floor(x.shape[-1] * a.get("scale_factor_width", 1)))


@register("upsample_nearest_neighbor")
def upsample_nearest_neighbor(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    return nearest(x, *_scaled(a, x))


@register("resize_nearest_neighbor")
def resize_nearest_neighbor(a: Args) -> torch.Tensor:
    return nearest(a.tensor("x"), a.get("target_size_height"), a.get("target_size_width"))


@register("upsample_bilinear")
def upsample_bilinear(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    align = a.get("align_corners", True)
    half_pixel = a.get("half_pixel_centers", not align)
    if align:
        mode = "STRICT_ALIGN_CORNERS"
    else:
        mode = "UNALIGN_CORNERS" if half_pixel else "DEFAULT"
    return bilinear(x, *_scaled(a, x), mode)


@register("resize_bilinear")
def resize_bilinear(a: Args) -> torch.Tensor:
    return bilinear(a.tensor("x"), a.get("target_size_height"), a.get("target_size_width"),
                    a.get("sampling_mode", "DEFAULT"))


@register("resize", since=17)
def resize(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    resized = int(a.get("resized_dims"))
    if resized != 2:
        raise a.unsupported(f"resized_dims={resized}")
    target = a.ints("shape")[-2:]
    height, width = (t if t != 0 else s for t, s in zip(target, x.shape[-2:]))
    mode = a.get("interpolation_mode", "LINEAR")
    if mode == "LINEAR":
        return bilinear(x, height, width, a.get("sampling_mode", "DEFAULT"))
    if mode == "NEAREST_NEIGHBOR":
        # resize picks the input cell nearest to each sampling point (upsample_* floors).
        sampling = a.get("sampling_mode", "DEFAULT")
        for dim, size in ((x.dim() - 2, height), (x.dim() - 1, width)):
            index = torch.floor(_grid(x.shape[dim], size, sampling) + 0.5).long()
            x = x.index_select(dim, index.clamp(max=x.shape[dim] - 1))
        return x
    raise a.unsupported(f"interpolation_mode {mode}")


@register("crop")
def crop(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    (top, bottom), (left, right) = a.ints("crop_height"), a.ints("crop_width")
    return x[..., top: x.shape[-2] - bottom, left: x.shape[-1] - right]


