"""Gather and scatter ops."""

from __future__ import annotations

import math

import torch

from sdbuild.evaluator.ops.layout import positive_axis
from sdbuild.evaluator.registry import Args, register


def _positive(indices: torch.Tensor, size: int | torch.Tensor, ios: int) -> torch.Tensor:
    """Indices as non-negative int64, refusing out-of-bound ones rather than guessing.

    Before iOS17 a negative index counts from the end; from iOS17 on it is out of bounds.
    """
    indices = indices.long()
    if ios < 17:
        indices = torch.where(indices < 0, indices + size, indices)
    if bool(((indices < 0) | (indices >= size)).any()):
        raise IndexError("Indices is out of bounds")
    return indices


def _batched(fn, x: torch.Tensor, indices: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """Apply ``fn(x_b, indices_b)`` to each of the leading ``batch_dims`` slices."""
    if batch_dims == 0:
        return fn(x, indices)
    lead = x.shape[:batch_dims]
    xs = x.reshape((-1,) + x.shape[batch_dims:])
    ids = indices.reshape((-1,) + indices.shape[batch_dims:])
    out = torch.stack([fn(xb, ib) for xb, ib in zip(xs, ids)])
    return out.reshape(lead + out.shape[1:])


@register("gather")
def gather(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    batch_dims = a.get("batch_dims", 0)
    axis = positive_axis(a.get("axis", 0), x.dim()) - batch_dims

    def take(xb: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
        flat = _positive(ib, xb.shape[axis], a.ios).reshape(-1)
        picked = xb.index_select(axis, flat)
        return picked.reshape(xb.shape[:axis] + ib.shape + xb.shape[axis + 1:])

    return _batched(take, x, a.tensor("indices"), batch_dims)


@register("gather_along_axis")
def gather_along_axis(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    axis = positive_axis(a.get("axis", 0), x.dim())
    return torch.gather(x, axis, _positive(a.tensor("indices"), x.shape[axis], a.ios))


@register("gather_nd")
def gather_nd(a: Args) -> torch.Tensor:
    def take(xb: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
        depth = ib.shape[-1]
        sizes = torch.tensor(xb.shape[:depth])
        ib = _positive(ib, sizes, a.ios)
        return xb[tuple(ib[..., i] for i in range(depth))]

    return _batched(take, a.tensor("x"), a.tensor("indices"), a.get("batch_dims", 0))


def _scatter_rows(data: torch.Tensor, rows: torch.Tensor, updates: torch.Tensor, mode: str,
                  a: Args) -> torch.Tensor:
    """Combine ``updates[i]`` into ``data[rows[i]]`` (all along dimension 0) by ``mode``."""
    updates = updates.to(data.dtype)
    if mode == "update":
        return data.index_copy(0, rows, updates)
    if mode == "add":
        return data.index_add(0, rows, updates)
    if mode == "sub":
        return data.index_add(0, rows, -updates)
    reduce = {"mul": "prod", "max": "amax", "min": "amin", "div": "prod"}.get(mode)
    if reduce is None:
        raise a.unsupported(f"mode {mode}")
    if mode == "div":
        updates = 1.0 / updates
    return data.index_reduce(0, rows, updates, reduce, include_self=True)


@register("scatter")
def scatter(a: Args) -> torch.Tensor:
    data = a.tensor("data")
    axis = positive_axis(a.get("axis", 0), data.dim())
    rows = _positive(a.tensor("indices"), data.shape[axis], a.ios).reshape(-1)
    moved = data.movedim(axis, 0)
    # updates are data.shape[:axis] + indices.shape + data.shape[axis + 1:].
    updates = a.tensor("updates").movedim(axis, 0).reshape((rows.numel(),) + moved.shape[1:])
    out = _scatter_rows(moved, rows, updates, a.get("mode", "add"), a)
    return out.movedim(0, axis)


@register("scatter_along_axis")
def scatter_along_axis(a: Args) -> torch.Tensor:
    data = a.tensor("data")
    axis = positive_axis(a.get("axis", 0), data.dim())
    indices = _positive(a.tensor("indices"), data.shape[axis], a.ios)
    updates = a.tensor("updates").to(data.dtype)
    mode = a.get("mode", "add")
    if mode == "update":
        return data.scatter(axis, indices, updates)
    if mode in ("add", "sub"):
        return data.scatter_add(axis, indices, updates if mode == "add" else -updates)
    reduce = {"mul": "prod", "max": "amax", "min": "amin", "div": "prod"}.get(mode)
    if reduce is None:
        raise a.unsupported(f"mode {mode}")
    if mode == "div":
        updates = 1.0 / updates
    return data.scatter_reduce(axis, indices, updates, reduce, include_self=True)


@register("scatter_nd")
def scatter_nd(a: Args) -> torch.Tensor:
    data = a.tensor("data")
    indices = a.tensor("indices")
    depth = indices.shape[-1]
    sizes = data.shape[:depth]
    indices = _positive(indices, torch.tensor(sizes), a.ios).reshape(-1, depth)
    # Row-major linear index over the first ``depth`` dimensions turns this into a row scatter.
    strides = torch.tensor([math.prod(sizes[i + 1:]) for i in range(depth)], dtype=torch.long)
    rows = (indices * strides).sum(dim=1)
    flat = data.reshape((math.prod(sizes),) + data.shape[depth:])
    updates = a.tensor("updates").reshape((rows.numel(),) + data.shape[depth:])
    out = _scatter_rows(flat, rows, updates, a.get("mode", "add"), a)
    return out.reshape(data.shape)
