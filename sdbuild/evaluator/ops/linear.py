"""Matrix products: linear, matmul, einsum."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdbuild.evaluator.registry import Args, register


def float_operand(a: Args, name: str) -> torch.Tensor | None:
    """An optional weight-like input in float (iOS17 allows integer weights with float data)."""
    if name not in a:
        return None
    value = a.tensor(name)
    return value if value.is_floating_point() else value.float()


@register("linear")
def linear(a: Args) -> torch.Tensor:
    return F.linear(a.tensor("x"), float_operand(a, "weight"), float_operand(a, "bias"))


@register("matmul")
def matmul(a: Args) -> torch.Tensor:
    x, y = a.tensor("x"), a.tensor("y")
    if a.get("transpose_x", False) and x.dim() > 1:
        x = x.transpose(-1, -2)
    if a.get("transpose_y", False) and y.dim() > 1:
        y = y.transpose(-1, -2)
    if x.dtype != y.dtype:
        dtype = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(dtype), y.to(dtype)
    return torch.matmul(x, y)


@register("einsum")
def einsum(a: Args) -> torch.Tensor:
    return torch.einsum(a.get("equation"), *a.tensors("values"))
