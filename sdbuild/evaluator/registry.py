"""Op kernels: how they are registered, looked up by opset, and what they receive.

A kernel is ``fn(args: Args) -> Tensor | tuple[Tensor, ...]`` computing one MIL op with torch.
Ops whose meaning changed between opsets register one kernel per version with ``since``; the
lookup picks the newest kernel not newer than the program's opset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from sdbuild.errors import SdbuildError

Kernel = Callable[["Args"], Any]

_KERNELS: dict[str, list[tuple[int, Kernel]]] = {}


class UnsupportedOpError(SdbuildError):
    """The program uses an op (or an op mode) the evaluator has no kernel for."""


def register(*op_types: str, since: int = 13) -> Callable[[Kernel], Kernel]:
    """Register ``fn`` for ``op_types`` from iOS ``since`` onwards."""

    def decorate(fn: Kernel) -> Kernel:
        for op_type in op_types:
            versions = _KERNELS.setdefault(op_type, [])
            versions.append((since, fn))
            versions.sort(key=lambda item: item[0])
        return fn

    return decorate


def lookup(op_type: str, ios: int) -> Kernel:
    """The kernel for ``op_type`` in a program of opset iOS ``ios``."""
    candidates = [fn for since, fn in _KERNELS.get(op_type, ()) if since <= ios]
    if not candidates:
        raise UnsupportedOpError(
            f"Core ML op '{op_type}' (opset iOS{ios}) is not supported by the sdbuild evaluator",
            "add a kernel for it in sdbuild/evaluator/ops/ or change the conversion so the op "
            "is not emitted",
        )
    return candidates[-1]


def supported_op_types() -> frozenset[str]:
    return frozenset(_KERNELS)


COMPACT_FROM = 4096  # elements: smaller float16 constants are not worth an upcast per use


class Const:
    """A value known at load time: a tensor (or string) plus its cached Python form.

    ``float16_exact`` says a float32 tensor holds float16 values (a float16 weight): a large one is
    then kept in float16 and handed out as float32 on each use, which is exact and halves the
    memory a model's weights take in the evaluator (1.7 GB for the SD 2.1 UNet, 5 GB for SDXL's),
    for an upcast that costs little next to the op reading it.
    """

    __slots__ = ("stored", "_python")

    def __init__(self, value: torch.Tensor | str | tuple, float16_exact: bool = False):
        compact = (float16_exact and isinstance(value, torch.Tensor) and value.dtype == torch.float32
                   and value.numel() >= COMPACT_FROM)
        self.stored = value.to(torch.float16) if compact else value
        self._python = None

    @property
    def value(self) -> torch.Tensor | str | tuple:
        stored = self.stored
        if isinstance(stored, torch.Tensor) and stored.dtype == torch.float16:
            return stored.to(torch.float32)
        return stored

    @property
    def python(self) -> Any:
        if self._python is None:
            self._python = to_python(self.value)
        return self._python


def to_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.tolist()
    return value


@dataclass(frozen=True)
class OutputInfo:
    """What the program declares about one op output."""

    name: str
    dtype: int  # MIL DataType
    shape: tuple[int | None, ...] | None  # None dims are unknown; None for non-tensors


class Args:
    """The inputs of one op invocation, each either a ``Const`` or a runtime tensor."""

    __slots__ = ("_values", "outputs", "ios", "op_type")

    def __init__(self, values: dict[str, Any], outputs: tuple[OutputInfo, ...], ios: int,
                 op_type: str):
        self._values = values
        self.outputs = outputs
        self.ios = ios
        self.op_type = op_type

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def tensor(self, name: str) -> torch.Tensor:
        return _as_tensor(self._values[name])

    def tensors(self, name: str) -> list[torch.Tensor]:
        """A variadic input (e.g. concat's ``values``) as a list of tensors."""
        value = self._values[name]
        items = value if isinstance(value, list) else [value]
        return [_as_tensor(v) for v in items]

    def get(self, name: str, default: Any = None) -> Any:
        """A parameter as a Python value (int, float, bool, str or nested list)."""
        if name not in self._values:
            return default
        value = self._values[name]
        if isinstance(value, Const):
            return value.python
        if isinstance(value, list):
            return [v.python if isinstance(v, Const) else to_python(v) for v in value]
        return to_python(value)

    def ints(self, name: str, default: Any = None) -> list[int] | None:
        value = self.get(name, default)
        if value is None:
            return None
        return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]

    def unsupported(self, what: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"Core ML op '{self.op_type}' (opset iOS{self.ios}) with {what} is not supported by "
            "the sdbuild evaluator",
            "add the mode to its kernel in sdbuild/evaluator/ops/",
        )


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, Const):
        value = value.value
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    return value
