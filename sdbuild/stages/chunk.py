"""Chunk stage: cut a (compressed) ML Program into packages of about equal weight bytes.

Runs after compression, so every chunk keeps the compressed weights (the reference converter
chunks first and quantizes after, and ships float16 chunks). Cuts follow the reference: after an
op with one output read by one op, nearest to an equal share of weight bytes. Chunk i reads the
model's inputs and the outputs of earlier chunks by name; every tensor crossing a cut is float32.

coremltools' `bisect_model` is not used: it makes only two chunks, counts sub-byte weights
(palette indices, int4) as whole bytes, and re-runs the optimization pipeline on each chunk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdbuild.config.compression import ChunkingConfig
from sdbuild.config.compression_rules import check_chunking
from sdbuild.contract import package_file_name
from sdbuild.errors import SdbuildError
from sdbuild.manifest import ChunkInfo, InterfaceInfo
from sdbuild.quiet import import_coremltools
from sdbuild.mlprogram import load_program, program_to_model, storage_bits
from sdbuild.stages.stage import REPORT, Stage, StageContext, StageResult

if TYPE_CHECKING:
    import coremltools as ct
    from coremltools.converters.mil.mil import Operation, Program, Var

MIB = 1 << 20


@dataclass(frozen=True)
class ChunkPlan:
    cut_after: tuple[str, ...]  # name of the last op of every chunk but the last
    weight_bytes: tuple[int, ...]  # per chunk (constants read on both sides count in both)


def chunk_file_names(model_id: str, component: str, num_chunks: int) -> list[str]:
    return [package_file_name(model_id, component, chunk=i) for i in range(1, num_chunks + 1)]


def plan_chunks(model: "ct.models.MLModel | Path | Program", cfg: ChunkingConfig, component: str = "model"
                ) -> ChunkPlan:
    """Cut points for ``cfg.num_chunks`` chunks of about equal weight bytes; SdbuildError when no
    such cut exists or a chunk would exceed ``cfg.max_chunk_weight_mb``."""
    check_chunking(cfg)
    prog = model if _is_program(model) else load_program(model)
    ops = list(prog.functions["main"].operations)
    weights = [_weights_read(op) for op in ops]
    sizes = _const_sizes(ops)
    # Each constant counted where it is first read: a running total to aim the cuts with.
    seen: set[str] = set()
    running = []
    for read in weights:
        running.append(sum(sizes[c] for c in read - seen))
        seen |= read
    running = np.cumsum(running)
    total = running[-1]
    candidates = [i for i, op in enumerate(ops[:-1]) if _is_cut_point(op)]
    cuts: list[int] = []
    for j in range(1, cfg.num_chunks):
        later = [i for i in candidates if not cuts or i > cuts[-1]]
        if not later:
            raise SdbuildError(f"{component} has no place to cut it in {cfg.num_chunks} chunks",
                               "use fewer chunks (chunking.num_chunks)")
        cuts.append(min(later, key=lambda i: abs(running[i] - total * j / cfg.num_chunks)))
    bounds = [-1, *cuts, len(ops) - 1]
    per_chunk = tuple(
        round(sum(sizes[c] for c in set().union(*weights[a + 1 : b + 1]))) for a, b in zip(bounds, bounds[1:])
    )
    limit = cfg.max_chunk_weight_mb * MIB
    if max(per_chunk) > limit:
        listed = ", ".join(f"{b / MIB:.1f}" for b in per_chunk)
        raise SdbuildError(
            f"{component} in {cfg.num_chunks} chunks has {listed} MB of weights; the limit is "
            f"chunking.max_chunk_weight_mb={cfg.max_chunk_weight_mb:g} MB",
            "raise chunking.num_chunks, or compress the weights more (e.g. quantization=kmeans6)",
        )
    return ChunkPlan(tuple(ops[i].name for i in cuts), per_chunk)


def chunk(package: Path, cfg: ChunkingConfig, out_dir: Path, model_id: str, component: str) -> list[ChunkInfo]:
    """Write ``package`` as ``cfg.num_chunks`` chunk packages named per the contract into
    ``out_dir``; returns what the manifest records of each."""
    from sdbuild.package_io import file_size, package_digest, save_package

    ct = import_coremltools()
    source = ct.models.MLModel(str(package), skip_model_load=True)
    spec = source.get_spec()
    metadata = dict(spec.description.metadata.userDefined)
    prog = load_program(source)
    plan = plan_chunks(prog, cfg, component)
    names = chunk_file_names(model_id, component, cfg.num_chunks)
    out_dir.mkdir(parents=True, exist_ok=True)
    infos = []
    bounds = [None, *plan.cut_after, None]
    for index, (name, first_after, last, weight_bytes) in enumerate(zip(names, bounds, bounds[1:], plan.weight_bytes)):
        if index:  # each cut edits its program: a fresh copy per chunk after the first
            prog = load_program(source)
        interface = _cut(prog, first_after, last)
        path = out_dir / name
        save_package(program_to_model(prog, spec), path, metadata=metadata)
        infos.append(ChunkInfo(file=name, sha256=package_digest(path), bytes=file_size(path),
                               interface=InterfaceInfo.model_validate(interface), weight_bytes=weight_bytes))
    return infos


# ----------------------------------------------------------------------------------------------
# MIL surgery


def _cut(prog: "Program", first_after: str | None, last: str | None) -> dict:
    """Keep the ops after ``first_after`` up to ``last`` (None: from the start / to the end).
    Tensors from before become float32 inputs, tensors needed later float32 outputs."""
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    block = prog.functions["main"]
    ops = list(block.operations)
    names = [op.name for op in ops]
    start = names.index(first_after) + 1 if first_after else 0
    end = names.index(last) if last else len(ops) - 1
    position = {id(op): i for i, op in enumerate(ops)}

    def crossing(var: "Var", after: int) -> bool:
        return var.val is None and any(position[id(c)] > after for c in var.child_ops)

    produced_before = [v for op in ops[:start] if _computes(op) for v in op.outputs]
    entering = [v for v in produced_before if any(start <= position[id(c)] <= end for c in v.child_ops)]
    produced_here = [v for op in ops[start : end + 1] if _computes(op) for v in op.outputs]
    final_outputs = {id(v) for v in block.outputs}
    leaving = [v for v in produced_here if id(v) in final_outputs or (last and crossing(v, end))]

    if entering:
        _make_inputs(block, [v for v in entering if v.val is None], anchor=ops[start - 1])
    block.set_outputs(_float32_outputs(block, leaving, final_outputs))
    PASS_REGISTRY["common::dead_code_elimination"](prog)
    _drop_unused_inputs(block)
    return {
        "inputs": [_tensor_dict(v) for v in block.inputs.values()],
        "outputs": [_tensor_dict(v) for v in block.outputs],
    }


def _make_inputs(block, entering: list["Var"], anchor: "Operation") -> None:
    """Each var from an earlier chunk becomes a float32 input of the same name. (MIL has no
    public call to add a function input; this is how coremltools' own bisect_model does it.)"""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.program import Placeholder

    with block:
        for var in entering:
            is_fp16 = var.dtype == types.fp16
            placeholder = Placeholder(sym_shape=var.shape, dtype=types.fp32 if is_fp16 else var.dtype, name=var.name)
            block._input_dict[var.name] = placeholder.outputs[0]
            block.function_inputs = tuple(block._input_dict.values())
            new_var = placeholder.outputs[0]
            if is_fp16:
                new_var = mb.cast(x=new_var, dtype="fp16", before_op=var.op, name=f"{var.name}_to_fp16_input")
            # force: constexpr (compressed weight) ops would otherwise veto the replacement.
            block.replace_uses_of_var_after_op(anchor_op=anchor, old_var=var, new_var=new_var, force_replace=True)


def _float32_outputs(block, leaving: list["Var"], final_outputs: set[int]) -> list["Var"]:
    """Outputs of this chunk; float16 tensors for later chunks are cast to float32 under their
    own name (the float16 original is renamed), as the reference does across the cut."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    outputs = []
    with block:
        for var in leaving:
            if id(var) in final_outputs or var.dtype != types.fp16:
                outputs.append(var)
                continue
            name = var.name
            var.name = f"{name}_fp16"
            outputs.append(mb.cast(x=var, dtype="fp32", name=name))
    return outputs


def _drop_unused_inputs(block) -> None:
    used = {k: v for k, v in block._input_dict.items() if v.child_ops}
    block._input_dict.clear()
    block._input_dict.update(used)
    block.function_inputs = tuple(used.values())


def _tensor_dict(var: "Var") -> dict:
    from coremltools.converters.mil.mil import types

    return {"name": var.name, "shape": [int(d) for d in var.shape], "dtype": types.builtin_to_string(var.dtype)
            .replace("fp", "float")}


# ----------------------------------------------------------------------------------------------
# Weight accounting


def _computes(op: "Operation") -> bool:
    return not op.op_type.startswith("const")


def _is_cut_point(op: "Operation") -> bool:
    return _computes(op) and len(op.outputs) == 1 and len(op.outputs[0].child_ops) == 1


def _weights_read(op: "Operation") -> set[str]:
    """Names of the const ops a computing op reads, directly or through constexpr ops."""
    if not _computes(op):
        return set()
    found: set[str] = set()
    pending = [v.op for v in _input_vars(op) if v.op is not None and not _computes(v.op)]
    while pending:
        producer = pending.pop()
        if producer.op_type == "const":
            found.add(producer.name)
        else:
            pending.extend(v.op for v in _input_vars(producer) if v.op is not None)
    return found


def _input_vars(op: "Operation") -> list["Var"]:
    result = []
    for value in op.inputs.values():
        result.extend(value if isinstance(value, (list, tuple)) else [value])
    return result


def _const_sizes(ops: list["Operation"]) -> dict[str, float]:
    return {op.name: storage_bits(op) / 8 for op in ops if op.op_type == "const"}


def _is_program(model) -> bool:
    from coremltools.converters.mil.mil import Program

    return isinstance(model, Program)


# ----------------------------------------------------------------------------------------------
# The stage


@dataclass(frozen=True)
class Chunked(StageResult):
    folder: Path
    chunks: list[ChunkInfo]

    def save(self, folder: Path) -> None:
        (folder / REPORT).write_text(json.dumps({"chunks": [c.model_dump() for c in self.chunks]}, sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> "Chunked":
        data = json.loads((folder / REPORT).read_text())
        return cls(folder, [ChunkInfo.model_validate(c) for c in data["chunks"]])

    def paths(self) -> list[Path]:
        return [self.folder / c.file for c in self.chunks]

    def files(self, job) -> dict[str, Path]:
        return {c.file: self.folder / c.file for c in self.chunks}

    def record(self, job) -> dict:
        return {"chunks": self.chunks}


class ChunkStage(Stage):
    """Key: the package it cuts (its stage's key) and the chunking config. Writes the chunk
    packages under their contract names and `report.json`."""

    name = "chunk"
    result = Chunked

    def key_parts(self, ctx: StageContext) -> dict | None:
        if not ctx.job.chunk:
            return None
        after, _ = ctx.latest_package()
        return {"after": after, "chunking": asdict(ctx.spec.chunking)}

    def run(self, ctx: StageContext, out: Path) -> Chunked:
        spec = ctx.spec
        return Chunked(out, chunk(ctx.latest_package()[1], spec.chunking, out, spec.source.model_id, ctx.job.component))
