"""Tensor layout ops: reshape/transpose/slice/concat/split/pad/tile and friends."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdbuild.evaluator.ops.layout import positive_axis
from sdbuild.evaluator.registry import Args, register


@register("reshape")
def reshape(a: Args) -> torch.Tensor:
    x, shape = a.tensor("x"), a.ints("shape")
    if 0 in shape:
        # iOS15/16: a 0 copies the input dimension at the same index; iOS17 aligns from the right
        # and a 0 with no matching dimension becomes 1.
        if a.ios >= 17:
            offset = x.dim() - len(shape)
            shape = [
                (x.shape[i + offset] if 0 <= i + offset < x.dim() else 1) if s == 0 else s
                for i, s in enumerate(shape)
            ]
        else:
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@register("reshape_like")
def reshape_like(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    refs = a.tensors("ref_tensors")
    begins, ends = a.ints("begins"), a.ints("ends")
    end_masks = a.get("end_masks")
    shape: list[int] = []
    for ref, begin, end, end_mask in zip(refs, begins, ends, end_masks):
        shape += list(ref.shape[begin:] if end_mask else ref.shape[begin:end])
    return x.reshape(shape)


@register("transpose")
def transpose(a: Args) -> torch.Tensor:
    return a.tensor("x").permute(a.ints("perm"))


@register("expand_dims")
def expand_dims(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    out_rank = x.dim() + len(a.ints("axes"))
    shape = list(x.shape)
    for axis in sorted(positive_axis(ax, out_rank) for ax in a.ints("axes")):
        shape.insert(axis, 1)
    return x.reshape(shape)


@register("squeeze")
def squeeze(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    axes = a.ints("axes")
    if axes is None:
        return x.reshape([s for s in x.shape if s != 1])
    drop = {positive_axis(ax, x.dim()) for ax in axes}
    return x.reshape([s for i, s in enumerate(x.shape) if i not in drop])


@register("flatten2d")
def flatten2d(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    axis = positive_axis(a.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register("shape")
def shape(a: Args) -> torch.Tensor:
    return torch.tensor(list(a.tensor("x").shape), dtype=torch.int32)


@register("concat")
def concat(a: Args) -> torch.Tensor:
    values = a.tensors("values")
    dtype = values[0].dtype
    for v in values[1:]:
        dtype = torch.promote_types(dtype, v.dtype)
    values = [v.to(dtype) for v in values]
    axis = positive_axis(a.get("axis"), values[0].dim())
    if a.get("interleave", False):
        stacked = torch.stack(values, dim=axis + 1)
        return stacked.reshape(values[0].shape[:axis] + (-1,) + values[0].shape[axis + 1:])
    return torch.cat(values, dim=axis)


@register("stack")
def stack(a: Args) -> torch.Tensor:
    values = a.tensors("values")
    return torch.stack(values, dim=positive_axis(a.get("axis"), values[0].dim() + 1))


@register("split")
def split(a: Args) -> tuple[torch.Tensor, ...]:
    x = a.tensor("x")
    axis = positive_axis(a.get("axis"), x.dim())
    sizes = a.ints("split_sizes")
    if sizes is None:
        declared = [o.shape[axis] if o.shape else None for o in a.outputs]
        if None in declared:
            count = a.get("num_splits")
            declared = [math.ceil(x.shape[axis] / count)] * count
            declared[-1] = x.shape[axis] - sum(declared[:-1])
        sizes = declared
    return tuple(torch.split(x, sizes, dim=axis))


def _slice_range(size: int, begin, end, stride: int, begin_masked: bool, end_masked: bool):
    """The indices ``begin:end:stride`` selects along a dimension (Python slice semantics)."""
    return range(*slice(None if begin_masked else begin, None if end_masked else end,
                        stride).indices(size))


def _slice_dim(x: torch.Tensor, dim: int, selected: range) -> torch.Tensor:
    if selected.step > 0:
        key = [slice(None)] * x.dim()
        key[dim] = slice(selected.start, selected.stop, selected.step)
        return x[tuple(key)]
    # torch views cannot step backwards: gather the indices instead.
    return x.index_select(dim, torch.tensor(list(selected), dtype=torch.long))


class _SliceSpec:
    """slice_by_index / slice_update parameters, with masks and strides defaulted."""

    def __init__(self, a: Args, rank: int):
        self.begin, self.end = a.ints("begin"), a.ints("end")
        self.stride = a.ints("stride") or [1] * rank
        self.begin_mask = a.get("begin_mask") or [False] * rank
        self.end_mask = a.get("end_mask") or [False] * rank
        self.squeeze_mask = a.get("squeeze_mask") or [False] * rank

    def selected(self, dim: int, size: int) -> range:
        return _slice_range(size, self.begin[dim], self.end[dim], self.stride[dim],
                            self.begin_mask[dim], self.end_mask[dim])


@register("slice_by_index")
def slice_by_index(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    spec = _SliceSpec(a, x.dim())
    for dim in range(x.dim()):
        if spec.squeeze_mask[dim]:
            x = x.narrow(dim, positive_axis(spec.begin[dim], x.shape[dim]), 1)
        else:
            x = _slice_dim(x, dim, spec.selected(dim, x.shape[dim]))
    return x.reshape([s for s, squeezed in zip(x.shape, spec.squeeze_mask) if not squeezed])


@register("slice_by_size")
def slice_by_size(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    for dim, (begin, size) in enumerate(zip(a.ints("begin"), a.ints("size"))):
        begin = positive_axis(begin, x.shape[dim])
        length = x.shape[dim] - begin if size == -1 else size
        x = x.narrow(dim, begin, length)
    return x


@register("slice_update", since=18)
def slice_update(a: Args) -> torch.Tensor:
    x = a.tensor("x").clone()
    spec = _SliceSpec(a, x.dim())
    kept = [d for d in range(x.dim()) if not spec.squeeze_mask[d]]
    key: list = []
    for dim in range(x.dim()):
        if spec.squeeze_mask[dim]:
            key.append(positive_axis(spec.begin[dim], x.shape[dim]))
            continue
        # Each index list on its own axis, so together they select the whole sliced block.
        shape = [1] * len(kept)
        shape[kept.index(dim)] = -1
        selected = spec.selected(dim, x.shape[dim])
        key.append(torch.tensor(list(selected), dtype=torch.long).reshape(shape))
    target = x[tuple(key)]
    x[tuple(key)] = a.tensor("update").to(x.dtype).reshape(target.shape)
    return x


@register("tile")
def tile(a: Args) -> torch.Tensor:
    return a.tensor("x").repeat(a.ints("reps"))


@register("reverse")
def reverse(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    axes = a.ints("axes")
    return x.flip(list(range(x.dim())) if axes is None else axes)


@register("reverse_sequence")
def reverse_sequence(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    lengths = a.ints("lengths")
    seq_axis = positive_axis(a.get("seq_axis", 0), x.dim())
    batch_axis = positive_axis(a.get("batch_axis", 0), x.dim())
    out = x.clone()
    for b, length in enumerate(lengths):
        rows = x.select(batch_axis, b)
        axis = seq_axis - (seq_axis > batch_axis)
        head = rows.narrow(axis, 0, length).flip([axis])
        out.select(batch_axis, b).narrow(axis, 0, length).copy_(head)
    return out


@register("pad")
def pad(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    pads = a.ints("pad")
    mode = a.get("mode", "constant")
    padded_dims = len(pads) // 2
    # F.pad lists (begin, end) pairs from the last dimension backwards.
    torch_pads = [p for i in reversed(range(padded_dims)) for p in (pads[2 * i], pads[2 * i + 1])]
    if mode == "constant":
        return F.pad(x, torch_pads, value=float(a.get("constant_val", 0.0)))
    if mode not in ("reflect", "replicate"):
        raise a.unsupported(f"mode {mode}")
    # Reflect/replicate need (N, C, *padded) layouts: fold the other dimensions into C.
    lead = x.shape[: x.dim() - padded_dims]
    folded = x.reshape((1, math.prod(lead)) + x.shape[x.dim() - padded_dims:])
    out = F.pad(folded.float(), torch_pads, mode=mode)
    return out.reshape(lead + out.shape[2:]).to(x.dtype)


@register("fill")
def fill(a: Args) -> torch.Tensor:
    return torch.full(a.ints("shape"), a.get("value", 0.0))


@register("fill_like", since=16)
def fill_like(a: Args) -> torch.Tensor:
    return torch.full(a.tensor("ref_tensor").shape, a.get("value", 0.0))


@register("range_1d")
def range_1d(a: Args) -> torch.Tensor:
    return torch.arange(a.get("start"), a.get("end"), a.get("step"))


@register("band_part")
def band_part(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    lower, upper = a.get("lower", -1), a.get("upper", -1)
    rows = torch.arange(x.shape[-2]).unsqueeze(1)
    cols = torch.arange(x.shape[-1]).unsqueeze(0)
    keep = torch.ones_like(rows - cols, dtype=torch.bool)
    if lower >= 0:
        keep &= rows - cols <= lower
    if upper >= 0:
        keep &= cols - rows <= upper
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype))


@register("cumsum")
def cumsum(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    axis = positive_axis(a.get("axis", 0), x.dim())
    if a.get("reverse", False):
        x = x.flip([axis])
    out = torch.cumsum(x, dim=axis).to(x.dtype)
    if a.get("exclusive", False):
        out = torch.cat([torch.zeros_like(out.narrow(axis, 0, 1)),
                         out.narrow(axis, 0, out.shape[axis] - 1)], dim=axis)
    return out.flip([axis]) if a.get("reverse", False) else out


@register("one_hot")
def one_hot(a: Args) -> torch.Tensor:
    indices = a.tensor("indices").long()
    depth = int(a.get("one_hot_vector_size"))
    axis = a.get("axis", -1)
    on, off = a.get("on_value", 1), a.get("off_value", 0)
    hot = F.one_hot(indices.clamp(min=0), depth).bool() & (indices >= 0).unsqueeze(-1)
    out = torch.where(hot, torch.tensor(on), torch.tensor(off))
    return out.movedim(-1, positive_axis(axis, indices.dim() + 1))


@register("non_zero")
def non_zero(a: Args) -> torch.Tensor:
    return torch.nonzero(a.tensor("x")).to(torch.int32)


@register("argsort")
def argsort(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    return torch.argsort(x, dim=a.get("axis", -1), descending=not a.get("ascending", False),
                         stable=True)


@register("topk")
def topk(a: Args) -> tuple[torch.Tensor, ...]:
    x = a.tensor("x")
    axis = positive_axis(a.get("axis", -1), x.dim())
    k = a.get("k", 1)
    k = x.shape[axis] if k == -1 else k
    indices = torch.argsort(x, dim=axis, descending=not a.get("ascending", False), stable=True)
    indices = indices.narrow(axis, 0, k)
    values = torch.gather(x, axis, indices)
    if not a.get("return_indices", True):
        return (values,)
    return values, indices


@register("sliding_windows")
def sliding_windows(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    axis = positive_axis(a.get("axis"), x.dim())
    windows = x.unfold(axis, a.get("size"), a.get("stride", 1))
    # unfold appends the window dimension last; MIL puts it right after the window index.
    return windows.movedim(-1, axis + 1)


@register("depth_to_space")
def depth_to_space(a: Args) -> torch.Tensor:
    x, b = a.tensor("x"), a.get("block_size")
    n, c, h, w = x.shape
    x = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(n, c // (b * b), h * b, w * b)


@register("space_to_depth")
def space_to_depth(a: Args) -> torch.Tensor:
    x, b = a.tensor("x"), a.get("block_size")
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(n, c * b * b, h // b, w // b)


@register("pixel_shuffle")
def pixel_shuffle(a: Args) -> torch.Tensor:
    return F.pixel_shuffle(a.tensor("x"), a.get("upscale_factor"))


@register("pixel_unshuffle", since=16)
def pixel_unshuffle(a: Args) -> torch.Tensor:
    return F.pixel_unshuffle(a.tensor("x"), a.get("downscale_factor"))


@register("space_to_batch")
def space_to_batch(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    (bh, bw) = a.ints("block_shape")
    (top, bottom), (left, right) = a.get("paddings")
    x = F.pad(x, [left, right, top, bottom])
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // bh, bh, w // bw, bw).permute(3, 5, 0, 1, 2, 4)
    return x.reshape(bh * bw * n, c, h // bh, w // bw)


@register("batch_to_space")
def batch_to_space(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    (bh, bw) = a.ints("block_shape")
    (top, bottom), (left, right) = a.get("crops")
    nb, c, h, w = x.shape
    n = nb // (bh * bw)
    x = x.reshape(bh, bw, n, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(n, c, h * bh, w * bw)
    return x[:, :, top: h * bh - bottom, left: w * bw - right]
