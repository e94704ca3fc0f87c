"""The execution plan: steps, when each runtime tensor can be freed, and attention fusion."""

from __future__ import annotations

import string
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
    """softmax(Q K^T) V on operands permuted to (batch.., L, E), (batch.., S, E), (batch.., S, Ev)."""
    query, key, value = (a.tensor(n).permute(a.ints(f"{n}_axes")) for n in ("query", "key", "value"))
    out = F.scaled_dot_product_attention(query, key, value, scale=1.0)
    return out.permute(a.ints("output_axes"))


def _product_labels(step: Step, shapes: dict[str, tuple]) -> tuple[list[Ref], list[str], str] | None:
    """A two-operand matmul or einsum as (operands, their axis labels, output labels)."""
    if step.op_type == "einsum":
        operands = step.input("values")
        equation = str(_const(step.input("equation"), "")).replace(" ", "")
        if not isinstance(operands, list) or len(operands) != 2 or "..." in equation \
                or equation.count("->") != 1:
            return None
        inputs, output = equation.split("->")
        labels = inputs.split(",")
        if len(labels) != 2:
            return None
        return operands, labels, output
    if step.op_type != "matmul":
        return None
    operands = [step.input("x"), step.input("y")]
    rank = len(step.outputs[0].shape or ())
    if rank < 3 or any(len(_shape(ref, shapes) or ()) != rank for ref in operands):
        return None  # batch broadcasting between operands is left unfused
    batch = "abcdefgh"[: rank - 2]
    x = batch + ("ji" if _const(step.input("transpose_x"), False) else "ij")
    y = batch + ("kj" if _const(step.input("transpose_y"), False) else "jk")
    return operands, [x, y], batch + "ik"


def _shape(ref: Ref, shapes: dict[str, tuple]) -> tuple | None:
    if isinstance(ref, Const):
        return tuple(ref.stored.shape) if isinstance(ref.stored, torch.Tensor) else None  # no upcast for a shape
    return shapes.get(ref) if isinstance(ref, str) else None


def _single(labels: set[str]) -> str | None:
    return next(iter(labels)) if len(labels) == 1 else None


def _attention_axes(scores: tuple, axis: int, product: tuple, weights: Ref
                    ) -> tuple[Ref, Ref, Ref, dict[str, list[int]]] | None:
    """(query, key, value, permutations) when ``softmax(scores, axis)`` feeds ``product`` as an
    attention: ``scores`` contracts one query-side and one key-side axis, ``product`` contracts the
    key axis with one value axis, and every other axis is a batch axis of all three."""
    (x, y), (x_labels, y_labels), s_labels = scores
    operands, labels, o_labels = product
    if any(len(set(ls)) != len(ls) for ls in (x_labels, y_labels, s_labels, *labels, o_labels)):
        return None
    key_label = s_labels[axis]
    feature = _single((set(x_labels) | set(y_labels)) - set(s_labels))
    if feature is None or (key_label in x_labels) == (key_label in y_labels):
        return None
    (query, q_labels), (key, k_labels) = sorted(
        ((x, x_labels), (y, y_labels)), key=lambda item: key_label in item[1])
    query_label = _single(set(s_labels) - set(k_labels) - {key_label})
    batch = [c for c in s_labels if c not in (key_label, query_label)]
    if query_label is None or set(q_labels) != {*batch, query_label, feature} \
            or set(k_labels) != {*batch, key_label, feature}:
        return None
    # The product in the scores' labels: the weights operand's axes are the scores' axes.
    w_index = [i for i, ref in enumerate(operands) if ref == weights]
    if len(w_index) != 1 or len(labels[w_index[0]]) != len(s_labels):
        return None
    value, v_labels = operands[1 - w_index[0]], labels[1 - w_index[0]]
    rename = dict(zip(labels[w_index[0]], s_labels))
    value_feature = _single(set(v_labels) - set(rename))
    if value_feature is None or any(c not in rename and c != value_feature for c in o_labels):
        return None
    value_label = rename[value_feature] = next(
        c for c in string.ascii_letters if c not in s_labels + x_labels + y_labels)
    v_labels = "".join(rename[c] for c in v_labels)
    o_labels = "".join(rename[c] for c in o_labels)
    batch_labels = "".join(batch)
    if set(v_labels) != {*batch, key_label, value_label} \
            or sorted(o_labels) != sorted(batch_labels + query_label + value_label):
        return None

    def axes(source: str, target: str) -> list[int]:
        return [source.index(c) for c in target]

    return query, key, value, {
        "query_axes": axes(q_labels, batch_labels + query_label + feature),
        "key_axes": axes(k_labels, batch_labels + key_label + feature),
        "value_axes": axes(v_labels, batch_labels + key_label + value_label),
        "output_axes": axes(batch_labels + query_label + value_label, o_labels),
    }


def fuse_attention(steps: list[Step], keep: set[str], input_shapes: dict[str, tuple]) -> list[Step]:
    """``product(q, k) -> softmax(key axis) -> product(., v)`` becomes one fused attention step.

    A product is a matmul (any transposes) or a two-operand einsum: the patterns of sdbuild's
    ORIGINAL and SPLIT_EINSUM attention. Only when the score and weight tensors have no other
    reader: the result is the same up to float32 rounding, without materializing the (L x S)
    attention matrices. In float16-storage mode this skips the float16 rounding of those two
    matrices, which the device would do: the fused result is closer to float32, not further.
    """
    readers = Counter(n for step in steps for _, ref in step.inputs for n in names(ref))
    producer = {o.name: i for i, step in enumerate(steps) for o in step.outputs}
    shapes = dict(input_shapes)
    shapes.update((o.name, o.shape) for step in steps for o in step.outputs if o.shape is not None)
    fused: dict[int, Step] = {}
    removed: set[int] = set()
    for index, step in enumerate(steps):
        product = _product_labels(step, shapes)
        if product is None:
            continue
        for weights in product[0]:
            softmax_index = producer.get(weights) if isinstance(weights, str) else None
            if softmax_index is None or steps[softmax_index].op_type != "softmax":
                continue
            softmax = steps[softmax_index]
            scores_ref = softmax.input("x")
            scores_index = producer.get(scores_ref) if isinstance(scores_ref, str) else None
            if scores_index is None or scores_index in removed or scores_index in fused:
                continue
            scores_step = steps[scores_index]
            scores = _product_labels(scores_step, shapes)
            rank = len(softmax.outputs[0].shape or ())
            axis = _const(softmax.input("axis"))
            if (scores is None or rank < 3 or not isinstance(axis, int) or not -rank <= axis < rank
                    or readers[weights] != 1 or readers[scores_ref] != 1
                    or weights in keep or scores_ref in keep):
                continue
            attention = _attention_axes(scores, axis % rank, product, weights)
            if attention is None:
                continue
            query, key, value, axes = attention
            fused[index] = Step(
                _fused_attention, f"{scores_step.op_type}+softmax+{step.op_type}",
                (("query", query), ("key", key), ("value", value),
                 *((name, Const(tuple(perm))) for name, perm in axes.items())),
                step.outputs,
            )
            removed.update((scores_index, softmax_index))
            break
    return [fused.get(i, s) for i, s in enumerate(steps) if i not in removed]
