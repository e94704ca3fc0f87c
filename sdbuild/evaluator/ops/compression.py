"""Weight decompression (``constexpr_*``, folded once at load time) and runtime (de)quantization.

iOS16 forms: ``constexpr_lut_to_dense`` (bit-packed uint8 indices + flat LUT + shape),
``constexpr_affine_dequantize``, ``constexpr_sparse_to_dense`` (bit-packed mask + shape),
``constexpr_cast``. iOS18 forms: ``constexpr_lut_to_dense`` (n-bit indices tensor + per-group,
optionally vector, LUT), ``constexpr_blockwise_shift_scale``, ``constexpr_sparse_to_dense``
(uint1 mask tensor), ``constexpr_lut_to_sparse`` and ``constexpr_sparse_blockwise_shift_scale``
(which return a (mask, nonzero values) pair for a following ``constexpr_sparse_to_dense``).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from sdbuild.evaluator.registry import Args, register
from sdbuild.evaluator.values import unpack_bits


def _broadcast_on_axis(param: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    """A scalar or per-``axis`` vector shaped to broadcast against a rank-``rank`` tensor."""
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return param.reshape(shape)


def _unpacked(packed: torch.Tensor, bits: int, count: int) -> np.ndarray:
    """One uint8 per value: a palette index or a mask bit."""
    return unpack_bits(packed.numpy().astype(np.uint8, copy=False).reshape(-1), bits, count)


def _gathered(lut: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    """``lut[indices]``: numpy gathers by uint8 indices directly (torch would widen them to int64)."""
    return torch.from_numpy(lut.numpy()[indices])


# Below this many values a palette decodes in one thread (a thread pool costs more than it saves).
_PARALLEL_VALUES = 1 << 20


def _palette_decoded(lut: torch.Tensor, packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """``lut[indices]`` for ``count`` ``bits``-wide packed indices, unpacked and gathered in one
    part per torch thread: numpy releases the GIL in both, and UNet palettes are large."""
    raw = packed.numpy().astype(np.uint8, copy=False).reshape(-1)
    parts = torch.get_num_threads()
    if count < _PARALLEL_VALUES or parts < 2:
        return _gathered(lut, unpack_bits(raw, bits, count))
    group_bytes = math.lcm(bits, 8) // 8
    per_group = group_bytes * 8 // bits
    part = -(-count // (parts * per_group)) * per_group  # whole byte groups per part
    table = lut.numpy()
    out = np.empty(count, table.dtype)

    def decode(start: int) -> None:
        stop = min(start + part, count)
        first = start // per_group * group_bytes
        out[start:stop] = table[unpack_bits(raw[first:first + (part // per_group) * group_bytes], bits,
                                            stop - start)]

    with ThreadPoolExecutor(parts) as pool:
        list(pool.map(decode, range(0, count, part)))
    return torch.from_numpy(out)


def _scale_and_zero_point(a: Args, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine quantization parameters (scalars or per-``axis`` vectors), ready to broadcast."""
    axis = a.get("axis", 0) % max(data.dim(), 1)
    scale = _broadcast_on_axis(a.tensor("scale").float(), data.dim(), axis)
    if "zero_point" not in a:
        return scale, torch.zeros(())
    return scale, _broadcast_on_axis(a.tensor("zero_point").float(), data.dim(), axis)


def _dequantized(a: Args, data_name: str) -> torch.Tensor:
    data = a.tensor(data_name)
    scale, zero_point = _scale_and_zero_point(a, data)
    return (data.float() - zero_point) * scale


@register("constexpr_affine_dequantize", since=16)
def affine_dequantize(a: Args) -> torch.Tensor:
    return _dequantized(a, "quantized_data")


@register("constexpr_cast", since=16)
def constexpr_cast(a: Args) -> torch.Tensor:
    return a.tensor("source_val")


@register("constexpr_lut_to_dense", since=16)
def lut_to_dense_ios16(a: Args) -> torch.Tensor:
    lut = a.tensor("lut")
    shape = a.ints("shape")
    bits = int(math.log2(lut.numel()))
    return _palette_decoded(lut, a.tensor("indices"), bits, math.prod(shape)).reshape(shape)


@register("constexpr_sparse_to_dense", since=16)
def sparse_to_dense_ios16(a: Args) -> torch.Tensor:
    shape = a.ints("shape")
    mask = torch.from_numpy(_unpacked(a.tensor("mask"), 1, math.prod(shape))).bool()
    return _scatter_nonzero(a.tensor("nonzero_data"), mask).reshape(shape)


def _scatter_nonzero(nonzero: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    dense = torch.zeros(mask.shape, dtype=nonzero.dtype)
    dense[mask] = nonzero.reshape(-1)
    return dense


def _lut_lookup(indices: torch.Tensor, lut: torch.Tensor, vector_axis: int | None) -> torch.Tensor:
    """iOS18 LUT: ``lut[g_0..g_{K-1}, palette, vector]`` with one LUT per block of indices.

    Each output element reads the LUT of its block (block size = indices dim / LUT dim); with
    vector palettization each index expands to ``vector`` consecutive values along
    ``vector_axis``.
    """
    rank = indices.dim()
    vector = lut.shape[-1]
    if vector == 1 and math.prod(lut.shape[:rank]) == 1 and indices.dtype == torch.uint8:
        return _gathered(lut.reshape(-1), indices.numpy())  # one palette: a plain gather
    if vector > 1:
        axis = vector_axis % rank
        indices = indices.transpose(-1, axis)
        lut = lut.transpose(rank - 1, axis)
    indices = indices.long()
    groups = lut.shape[:rank]
    group_index = torch.zeros((), dtype=torch.long)
    for dim, (size, count) in enumerate(zip(indices.shape, groups)):
        coordinate = torch.arange(size) // (size // count)
        shape = [1] * rank
        shape[dim] = -1
        group_index = group_index * count + coordinate.reshape(shape)
    flat_lut = lut.reshape(math.prod(groups), lut.shape[-2], vector)
    values = flat_lut[group_index, indices]  # indices.shape + (vector,)
    if vector == 1:
        return values.squeeze(-1)
    values = values.reshape(indices.shape[:-1] + (indices.shape[-1] * vector,))
    return values.transpose(-1, axis)


@register("constexpr_lut_to_dense", since=18)
def lut_to_dense(a: Args) -> torch.Tensor:
    return _lut_lookup(a.tensor("indices"), a.tensor("lut"), a.get("vector_axis"))


def _blockwise(data: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """``scale * (data - offset)`` with each scale/offset covering one block of ``data``."""
    data = data.float()
    for dim, (size, count) in enumerate(zip(data.shape, scale.shape)):
        if count != size:
            scale = scale.repeat_interleave(size // count, dim=dim)
            if offset is not None:
                offset = offset.repeat_interleave(size // count, dim=dim)
    if offset is not None:
        data = data - offset.float()
    return data * scale.float()


@register("constexpr_blockwise_shift_scale", since=18)
def blockwise_shift_scale(a: Args) -> torch.Tensor:
    offset = a.tensor("offset") if "offset" in a else None
    return _blockwise(a.tensor("data"), a.tensor("scale"), offset)


@register("constexpr_sparse_to_dense", since=18)
def sparse_to_dense(a: Args) -> torch.Tensor:
    return _scatter_nonzero(a.tensor("nonzero_data"), a.tensor("mask").bool())


@register("constexpr_lut_to_sparse", since=18)
def lut_to_sparse(a: Args) -> tuple[torch.Tensor, torch.Tensor]:
    mask = a.tensor("indices_mask").bool()
    indices = _scatter_nonzero(a.tensor("indices_nonzero_data").long(), mask)
    lut = a.tensor("lut")
    vector_axis = a.get("vector_axis")
    dense = _lut_lookup(indices, lut, vector_axis)
    if lut.shape[-1] > 1:
        mask = mask.repeat_interleave(lut.shape[-1], dim=vector_axis % mask.dim())
    return mask, dense[mask]


@register("constexpr_sparse_blockwise_shift_scale", since=18)
def sparse_blockwise_shift_scale(a: Args) -> tuple[torch.Tensor, torch.Tensor]:
    mask = a.tensor("data_mask").bool()
    data = _scatter_nonzero(a.tensor("nonzero_data").float(), mask)
    offset = a.tensor("offset") if "offset" in a else None
    return mask, _blockwise(data, a.tensor("scale"), offset)[mask]


@register("dequantize", since=17)
def dequantize(a: Args) -> torch.Tensor:
    return _dequantized(a, "input")


@register("quantize", since=17)
def quantize(a: Args) -> torch.Tensor:
    data = a.tensor("input")
    scale, zero_point = _scale_and_zero_point(a, data)
    low, high = (0, 255) if a.get("output_dtype") == "uint8" else (-128, 127)
    return (torch.round(data / scale) + zero_point).clamp(low, high)
