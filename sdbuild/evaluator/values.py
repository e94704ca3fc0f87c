"""MIL data types and constant values, decoded from the protobuf into torch tensors.

Runtime representation (one per MIL dtype, so every kernel sees the same kinds of tensors):
floating tensors of any width are float32 (fp16 rounding is applied separately, see
``program.py``), integers keep a torch integer type wide enough for their range, bools are bool.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from coremltools.proto import MIL_pb2

from sdbuild.errors import SdbuildError

DT = MIL_pb2.DataType

# Immediate values of these types are serialized as raw bytes; sub-byte types packed LSB first.
_SUB_BYTE_BITS = {DT.UINT1: 1, DT.UINT2: 2, DT.UINT3: 3, DT.UINT4: 4, DT.UINT6: 6, DT.INT4: 4}
_BYTES_NUMPY = {DT.FLOAT16: np.float16, DT.INT8: np.int8, DT.UINT8: np.uint8, DT.UINT32: np.uint32}

# torch dtype each MIL dtype lives in at run time.
_TORCH = {
    DT.BOOL: torch.bool,
    DT.FLOAT16: torch.float32, DT.FLOAT32: torch.float32, DT.FLOAT64: torch.float32,
    DT.BFLOAT16: torch.float32,
    DT.INT8: torch.int8, DT.INT16: torch.int16, DT.INT32: torch.int32, DT.INT64: torch.int64,
    DT.INT4: torch.int8,
    DT.UINT8: torch.uint8, DT.UINT16: torch.int32, DT.UINT32: torch.int64, DT.UINT64: torch.int64,
    DT.UINT1: torch.uint8, DT.UINT2: torch.uint8, DT.UINT3: torch.uint8, DT.UINT4: torch.uint8,
    DT.UINT6: torch.uint8,
}

# numpy dtype of a model's declared (description) input/output array types.
DESCRIPTION_NUMPY = {"FLOAT16": np.float16, "FLOAT32": np.float32, "DOUBLE": np.float64,
                     "INT32": np.int32}


def dtype_name(dtype: int) -> str:
    return DT.Name(dtype)


def torch_dtype(dtype: int) -> torch.dtype:
    try:
        return _TORCH[dtype]
    except KeyError:
        raise SdbuildError(f"MIL data type {dtype_name(dtype)} is not supported by the evaluator",
                           "convert the model with float16/float32 and integer tensors only") from None


def tensor_shape(value_type: MIL_pb2.ValueType) -> tuple[int | None, ...] | None:
    """Static shape of a tensor type (None for an unknown dimension); None for non-tensors."""
    if value_type.WhichOneof("type") != "tensorType":
        return None
    dims = value_type.tensorType.dimensions
    if any(d.WhichOneof("dimension") == "unknown" and d.unknown.variadic for d in dims):
        return None  # unknown rank
    return tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in dims)


def to_torch(array: np.ndarray, dtype: int) -> torch.Tensor:
    """A decoded numpy constant as the runtime tensor of its MIL dtype."""
    # np.ascontiguousarray would turn a 0-d array into 1-d; weights read from files are
    # read-only buffers, which torch tensors must not alias.
    array = np.asarray(array, order="C")
    if not array.flags.writeable:
        array = array.copy()
    if array.dtype == np.uint16:
        array = array.astype(np.int32)
    elif array.dtype in (np.uint32, np.uint64):
        array = array.astype(np.int64)
    return torch.from_numpy(array).to(torch_dtype(dtype))


class BlobFiles:
    """Reads ``BlobFileValue`` constants from a package's weights folder (one reader per file)."""

    def __init__(self, weights_dir: str | Path | None):
        self._weights_dir = weights_dir
        self._readers: dict[str, object] = {}

    def read(self, blob: MIL_pb2.Value.BlobFileValue, dtype: int, count: int) -> np.ndarray:
        from coremltools.libmilstoragepython import _BlobStorageReader

        if self._weights_dir is None:
            raise SdbuildError("the model references weight files but has no weights folder",
                               "load the model from its .mlpackage")
        path = os.path.join(self._weights_dir, os.path.basename(blob.fileName))
        reader = self._readers.get(path)
        if reader is None:
            if not os.path.isfile(path):
                raise SdbuildError(f"weight file {path} is missing", "rebuild the .mlpackage")
            reader = self._readers[path] = _BlobStorageReader(path)
        name = _BLOB_READERS.get(dtype)
        if name is None:
            raise SdbuildError(f"weights of type {dtype_name(dtype)} cannot be read from a blob file")
        data = getattr(reader, name)(blob.offset)
        if dtype == DT.FLOAT16:
            data = np.frombuffer(data.tobytes(), np.float16)
        # Sub-byte reads come back one element per byte, padded to a whole byte.
        return np.asarray(data)[:count]


_BLOB_READERS = {
    DT.UINT1: "read_uint1_data", DT.UINT2: "read_uint2_data", DT.UINT3: "read_uint3_data",
    DT.UINT4: "read_uint4_data", DT.UINT6: "read_uint6_data", DT.UINT8: "read_uint8_data",
    DT.INT4: "read_int4_data", DT.INT8: "read_int8_data", DT.UINT16: "read_uint16_data",
    DT.INT16: "read_int16_data", DT.FLOAT16: "read_fp16_data", DT.FLOAT32: "read_float_data",
    DT.INT32: "read_int32_data", DT.UINT32: "read_uint32_data",
}


def decode_value(value: MIL_pb2.Value, blobs: BlobFiles) -> torch.Tensor | str | tuple:
    """A constant ``Value`` as a runtime tensor (strings stay Python ``str``)."""
    kind = value.type.WhichOneof("type")
    if kind != "tensorType":
        raise SdbuildError(f"constant values of kind {kind} are not supported by the evaluator")
    dtype = value.type.tensorType.dataType
    shape = tuple(int(s) for s in tensor_shape(value.type))
    count = int(np.prod(shape, dtype=np.int64))
    if value.WhichOneof("value") == "blobFileValue":
        return to_torch(blobs.read(value.blobFileValue, dtype, count).reshape(shape), dtype)
    tensor = value.immediateValue.tensor
    field = tensor.WhichOneof("value")
    if dtype == DT.STRING:
        strings = list(tensor.strings.values)
        return strings[0] if shape == () else tuple(strings)
    if field == "bytes":
        array = _unpack_bytes(tensor.bytes.values, dtype, count)
    else:
        array = np.array(getattr(tensor, field).values)
    if array.size != count:
        raise SdbuildError(f"constant of shape {shape} holds {array.size} values")
    if dtype == DT.BOOL:
        array = array.astype(bool)
    return to_torch(array.reshape(shape), dtype)


def _unpack_bytes(raw: bytes, dtype: int, count: int) -> np.ndarray:
    bits = _SUB_BYTE_BITS.get(dtype)
    if bits is None:
        return np.frombuffer(raw, _BYTES_NUMPY.get(dtype, np.uint8))[:count].copy()
    words = unpack_bits(np.frombuffer(raw, np.uint8), bits, count)
    if dtype == DT.INT4:
        return np.where(words >= 8, words.astype(np.int8) - 16, words).astype(np.int8)
    return words


def unpack_bits(raw: np.ndarray, bits: int, count: int) -> np.ndarray:
    """``count`` unsigned ``bits``-wide values (``bits`` <= 8) packed LSB first into the bytes ``raw``.

    Bytes are taken in groups spanning a whole number of values (e.g. 3 bytes = 4 six-bit
    values); value ``j`` of every group is cut from the one or two bytes it spans by uint8
    shifts over a whole column: vectorized at one byte per value, which matters for UNet-size
    palettes (a group ends on a value boundary, so a value's second byte is in its group).
    """
    group_bytes = math.lcm(bits, 8) // 8
    per_group = group_bytes * 8 // bits
    groups = -(-count // per_group)
    padded = np.zeros(groups * group_bytes, np.uint8)
    padded[: min(raw.size, padded.size)] = raw[: padded.size]
    columns = padded.reshape(groups, group_bytes)
    out = np.empty((groups, per_group), np.uint8)
    mask = np.uint8((1 << bits) - 1)
    for j in range(per_group):
        byte, shift = divmod(j * bits, 8)
        value = columns[:, byte] >> np.uint8(shift)
        if shift + bits > 8:
            value |= columns[:, byte + 1] << np.uint8(8 - shift)
        np.bitwise_and(value, mask, out=out[:, j])
    return out.reshape(-1)[:count]
