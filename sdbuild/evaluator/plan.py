"""The execution plan: steps, when each runtime tensor can be freed, and attention fusion."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sdbuild.evaluator.registry import Args, Const, Kernel, OutputInfo

Ref = Any  # Const, the name of a runtime tensor, or a list of those (variadic input)


@dataclass
class Step:
    kernel: Kernel
    op_type: str
    inputs: tuple[tuple[str, Ref], ...]
    outputs: tuple[OutputInfo, ...]
    release: tuple[str, ...] = ()

    def input(self, key: str) -> Ref:
        return dict(self.inputs).get(key)


def names(ref: Ref) -> list[str]:
    """The runtime tensors a reference reads."""
    if isinstance(ref, str):
        return [ref]
    if isinstance(ref, list):
        return [r for r in ref if isinstance(r, str)]
    return []


def plan_releases(steps: list[Step], keep: set[str]) -> None:
    """Free each runtime tensor right after the last step that reads it (``keep`` survives)."""
    seen: set[str] = set()
    for step in reversed(steps):
        read = {n for _, ref in step.inputs for n in names(ref)} - keep - seen
        step.release = tuple(sorted(read))
        seen |= read


def _const(ref: Ref, default: Any = None) -> Any:
    return ref.python if isinstance(ref, Const) else default


def _fused_attention(a: Args) -> torch.Tensor:
    key = a.tensor("key")
    if a.get("transpose_key"):
        key = key.transpose(-1, -2)
    return F.scaled_dot_product_attention(a.tensor("query"), key, a.tensor("value"), scale=1.0)


def fuse_attention(steps: list[Step], keep: set[str]) -> list[Step]:
    """``matmul(q, k) -> softmax(last axis) -> matmul(., v)`` becomes one fused attention step.

    Only when the score and weight tensors have no other reader: the result is the same up to
    float32 rounding, without materializing the (L x S) attention matrices. Callers use this in
    float32 mode only, since the device would round those matrices to float16.
    """
    readers = Counter(n for step in steps for _, ref in step.inputs for n in names(ref))
    producer = {o.name: i for i, step in enumerate(steps) for o in step.outputs}
    fused: dict[int, Step] = {}
    removed: set[int] = set()
    for index, step in enumerate(steps):
        if step.op_type != "matmul" or _const(step.input("transpose_x"), False) \
                or _const(step.input("transpose_y"), False):
            continue
        weights = step.input("x")
        softmax_index = producer.get(weights) if isinstance(weights, str) else None
        if softmax_index is None or steps[softmax_index].op_type != "softmax":
            continue
        softmax = steps[softmax_index]
        scores = softmax.input("x")
        scores_index = producer.get(scores) if isinstance(scores, str) else None
        if scores_index is None or steps[scores_index].op_type != "matmul":
            continue
        scores_step = steps[scores_index]
        rank = len(softmax.outputs[0].shape or ())
        if (rank < 3 or _const(softmax.input("axis"), -1) not in (-1, rank - 1)
                or _const(scores_step.input("transpose_x"), True)
                or readers[weights] != 1 or readers[scores] != 1
                or weights in keep or scores in keep):
            continue
        fused[index] = Step(
            _fused_attention, "matmul+softmax+matmul",
            (("query", scores_step.input("x")), ("key", scores_step.input("y")),
             ("value", step.input("y")),
             # scores = q @ y (y is (.., E, S)) or q @ y^T (y is (.., S, E), SDPA's key layout).
             ("transpose_key", Const(not _const(scores_step.input("transpose_y"), False)))),
            step.outputs,
        )
        removed.update((scores_index, softmax_index))
    return [fused.get(i, s) for i, s in enumerate(steps) if i not in removed]
