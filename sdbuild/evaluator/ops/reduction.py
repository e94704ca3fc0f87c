"""Reductions over axes (``axes`` absent = all axes) and arg-reductions over one axis."""

from __future__ import annotations

import torch

from sdbuild.evaluator.registry import Args, register


def _prod(x: torch.Tensor, dim: list[int], keepdim: bool) -> torch.Tensor:
    for axis in sorted(dim, reverse=True):
        x = torch.prod(x, dim=axis, keepdim=keepdim)
    return x


_REDUCTIONS = {
    "reduce_sum": torch.sum,
    "reduce_mean": torch.mean,
    "reduce_max": torch.amax,
    "reduce_min": torch.amin,
    "reduce_prod": _prod,
    "reduce_l1_norm": lambda x, dim, keepdim: torch.sum(x.abs(), dim=dim, keepdim=keepdim),
    "reduce_l2_norm": lambda x, dim, keepdim: torch.sum(x.square(), dim=dim, keepdim=keepdim).sqrt(),
    "reduce_sum_square": lambda x, dim, keepdim: torch.sum(x.square(), dim=dim, keepdim=keepdim),
    "reduce_log_sum": lambda x, dim, keepdim: torch.sum(x, dim=dim, keepdim=keepdim).log(),
    "reduce_log_sum_exp": lambda x, dim, keepdim: torch.logsumexp(x, dim=dim, keepdim=keepdim),
}


def _reduction(op_type: str, fn) -> None:
    @register(op_type)
    def kernel(a: Args) -> torch.Tensor:
        x = a.tensor("x")
        axes = a.ints("axes")
        dims = list(range(x.dim())) if axes is None else [ax % max(x.dim(), 1) for ax in axes]
        if op_type == "reduce_mean" and not x.is_floating_point():
            x = x.float()
        return fn(x, dims, bool(a.get("keep_dims", False)))


for _name, _fn in _REDUCTIONS.items():
    _reduction(_name, _fn)


def _arg_reduction(op_type: str, fn) -> None:
    @register(op_type)
    def kernel(a: Args) -> torch.Tensor:
        x = a.tensor("x")
        axis = a.get("axis", -1)
        return fn(x, dim=axis, keepdim=bool(a.get("keep_dims", False)))


_arg_reduction("reduce_argmax", torch.argmax)
_arg_reduction("reduce_argmin", torch.argmin)
