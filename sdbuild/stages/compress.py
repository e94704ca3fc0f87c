"""Compress stage: weight palettization / linear quantization of a converted ML Program.

A preset (`conf/quantization/*.yaml`) becomes one decision per weight tensor, by precedence
op_config.op_name > a mixed-bit layer plan's layer > op_config.op_type > op_config.global > the
preset's mode; coremltools' compression passes then apply exactly those decisions, named per
constant, to one loaded program that is serialized once (without re-running the optimizer).

k-means palettes come from `sdbuild.palette`, not from coremltools' own k-means (see there why).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdbuild.config.compression import QuantizationConfig
from sdbuild.config.compression_rules import (
    IOS18_ONLY_MODES, CompressionRules, WeightScheme, check_target, compression_rules,
)
from sdbuild.errors import SdbuildError
from sdbuild.manifest import CompressionInfo
from sdbuild.mlprogram import WeightTensor, load_program, program_to_model, weight_tensors
from sdbuild.palette import KMeansPalette
from sdbuild.progress import counter
from sdbuild.quiet import import_coremltools
from sdbuild.stages.stage import PACKAGE, REPORT, Stage, StageContext, StageResult

if TYPE_CHECKING:
    import coremltools as ct
    from coremltools.converters.mil.mil import Program


@dataclass
class CompressionReport:
    mode: str
    nbits: list[int]  # bit widths of the compressed weights, ascending
    avg_bits_per_weight: float  # element-weighted over all weights, float ones at 16 (or 32)
    weight_bytes_before: int
    weight_bytes_after: int  # incl. palettes and scales
    compressed_by_op_type: dict[str, int] = field(default_factory=dict)
    float_by_op_type: dict[str, int] = field(default_factory=dict)
    weights_by_nbits: dict[str, int] = field(default_factory=dict)  # {"4": 120, "16": 300}
    unmatched_plan_layers: list[str] = field(default_factory=list)  # layer plan layers kept float16

    def as_manifest(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k in ("mode", "nbits", "avg_bits_per_weight", "weight_bytes_before", "weight_bytes_after")}


def compress(model: "ct.models.MLModel", cfg: QuantizationConfig, component: str, target: str,
             layer_plan: dict[str, int] | None = None) -> tuple["ct.models.MLModel", CompressionReport]:
    """Apply ``cfg`` (with its mixed-bit ``layer_plan``, see `layer_plan_of`) to ``model``;
    unchanged (mode "none") if the preset does not cover ``component``."""
    prog = load_program(model)
    before = weight_tensors(prog)
    if cfg.mode == "none" or component not in cfg.components:
        return model, _report("none", before, before)
    rules = compression_rules(cfg, layer_plan)
    check_target(rules, cfg, target, [component])
    _check_opset(prog, rules, component)
    decisions, unmatched = _decide(before, rules, component)
    if unmatched:
        # A converter may fuse a weight with a neighbouring op (e.g. a scale folded into a conv),
        # which drops its layer name: those layers keep float16 and the report lists them.
        warnings.warn(f"{len(unmatched)} mixed-bit layer plan layer(s) name no weight of this {component} "
                      f"and stay float16: {', '.join(unmatched[:5])}", stacklevel=2)
    _apply(prog, decisions, cfg)
    compressed = program_to_model(prog, model.get_spec())
    report = _report(cfg.mode, before, weight_tensors(prog))
    report.unmatched_plan_layers = unmatched
    return compressed, report


def _check_opset(prog: "Program", rules: CompressionRules, component: str) -> None:
    ct = import_coremltools()
    needs_ios18 = sorted({s.mode for s in rules.schemes() if s.mode in IOS18_ONLY_MODES})
    opset = prog.functions["main"].opset_version
    if needs_ios18 and opset < ct.target.iOS18:
        raise SdbuildError(
            f"quantization {', '.join(needs_ios18)} needs an iOS18 / macOS15 program, but this "
            f"{component} was converted for {opset.name}",
            "convert it with target=ios18 (or macos15)",
        )


def _decide(weights: list[WeightTensor], rules: CompressionRules, component: str
            ) -> tuple[dict[str, WeightScheme], list[str]]:
    """const name -> scheme for every float weight the rules compress, and the layer plan's
    layers that name no weight (they stay float16)."""
    named, missing = _match_names(weights, rules.by_name)
    if missing:
        raise SdbuildError(
            f"quantization.op_config.op_name names {len(missing)} weight(s) this {component} does not have: "
            f"{', '.join(missing[:3])}",
            "use a PyTorch layer name (down_blocks.0.resnets.0.conv1), a Core ML const or op name",
        )
    from_plan, unmatched = _match_names(weights, rules.by_layer_plan)
    if rules.by_layer_plan and not from_plan:
        raise SdbuildError(
            f"no layer of the mixed-bit layer plan names a weight of this {component} (e.g. {', '.join(unmatched[:3])})",
            "the plan was made for another model: run `sdbuild mixed-bit` on this one",
        )
    decisions = {}
    for weight in weights:
        if weight.compressed:
            continue
        if weight.name in named or weight.name in from_plan:
            scheme = named[weight.name] if weight.name in named else from_plan[weight.name]
        else:
            typed = {rules.by_type[t] for t in weight.consumers if t in rules.by_type}
            if len(typed) > 1:
                raise SdbuildError(
                    f"weight {weight.name} feeds op types {', '.join(weight.consumers)} that "
                    "quantization.op_config.op_type compresses differently",
                    f"name it in quantization.op_config.op_name.{weight.name}",
                )
            scheme = typed.pop() if typed else rules.default
        if scheme is not None:
            decisions[weight.name] = scheme
    return decisions, unmatched


def _match_names(weights: list[WeightTensor], by_name: dict[str, WeightScheme | None]
                 ) -> tuple[dict[str, WeightScheme | None], list[str]]:
    """const name -> scheme for keys naming weights (the longest, most specific key wins), and
    the keys that name none."""
    matched: dict[str, tuple[int, WeightScheme | None]] = {}
    missing = []
    for key, scheme in by_name.items():
        hits = [w for w in weights if not w.compressed and _names_weight(key, w)]
        if not hits:
            missing.append(key)
        for weight in hits:
            if weight.name not in matched or len(key) > matched[weight.name][0]:
                matched[weight.name] = (len(key), scheme)
    return {name: scheme for name, (_, scheme) in matched.items()}, missing


def _names_weight(key: str, weight: WeightTensor) -> bool:
    """Whether ``key`` names ``weight``: its const name, a reading op's name, or the PyTorch layer
    (``down_blocks.0.resnets.0.conv1``) or parameter it was converted from."""
    if key == weight.name or key in weight.consumer_names:
        return True
    stem = weight.name
    for suffix in ("_to_fp16", "_to_fp32"):
        stem = stem.removesuffix(suffix)
    path = key.replace(".", "_")
    if not path.endswith("_weight"):
        path += "_weight"
    return stem == path or stem.endswith("_" + path)


def _apply(prog: "Program", decisions: dict[str, WeightScheme], cfg: QuantizationConfig) -> None:
    """Run coremltools' compression passes with one named config per decided constant."""
    import_coremltools()
    import coremltools.optimize.coreml as cto  # registers the compression passes
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    palettized = [n for n, s in decisions.items() if s.mode in ("kmeans", "grouped_kmeans")]
    with counter(len(palettized), "k-means palettes") as palette_done:
        configs = {scheme: _op_config(scheme, cfg, palette_done) for scheme in set(decisions.values())}
        palettes = {n: configs[decisions[n]] for n in palettized}
        integers = {n: configs[s] for n, s in decisions.items() if s.mode in ("linear8", "blockwise_int4")}
        for pass_name, by_name in (("compression::palettize_weights", palettes),
                                   ("compression::linear_quantize_weights", integers)):
            if by_name:
                graph_pass = PASS_REGISTRY[pass_name]
                graph_pass.set_options([PassOption("config", cto.OptimizationConfig(op_name_configs=by_name))])
                graph_pass.apply(prog)


def _op_config(scheme: WeightScheme, cfg: QuantizationConfig, palette_done):
    import coremltools.optimize.coreml as cto

    threshold = cfg.weight_threshold
    if scheme.mode == "kmeans":
        return cto.OpPalettizerConfig(mode="custom", lut_function=KMeansPalette(scheme.nbits, cfg.seed, palette_done),
                                      weight_threshold=threshold)
    if scheme.mode == "grouped_kmeans":
        return cto.OpPalettizerConfig(mode="custom", lut_function=KMeansPalette(scheme.nbits, cfg.seed, palette_done),
                                      granularity="per_grouped_channel", group_size=scheme.group_size,
                                      weight_threshold=threshold)
    if scheme.mode == "linear8":
        return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                           weight_threshold=threshold)
    return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                       block_size=scheme.block_size, weight_threshold=threshold)


def _report(mode: str, before: list[WeightTensor], after: list[WeightTensor]) -> CompressionReport:
    elements = sum(w.elements for w in after) or 1
    compressed = [w for w in after if w.compressed]
    by_nbits = Counter(str(w.element_bits) for w in after)
    return CompressionReport(
        mode=mode,
        nbits=sorted({w.element_bits for w in compressed}),
        avg_bits_per_weight=round(sum(w.elements * w.element_bits for w in after) / elements, 4),
        weight_bytes_before=math.ceil(sum(w.storage_bits for w in before) / 8),
        weight_bytes_after=math.ceil(sum(w.storage_bits for w in after) / 8),
        compressed_by_op_type=dict(sorted(Counter(t for w in compressed for t in w.consumers).items())),
        float_by_op_type=dict(sorted(Counter(t for w in after if not w.compressed for t in w.consumers).items())),
        weights_by_nbits=dict(sorted(by_nbits.items(), key=lambda kv: int(kv[0]))),
    )


@dataclass(frozen=True)
class Compressed(StageResult):
    """The compressed package and what the manifest records of its compression."""

    package: Path
    report: CompressionInfo

    def save(self, folder: Path) -> None:
        (folder / REPORT).write_text(json.dumps(self.report.model_dump(), sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> "Compressed":
        return cls(folder / PACKAGE, CompressionInfo.model_validate_json((folder / REPORT).read_text()))

    def files(self, job) -> dict[str, Path]:
        return {job.file_name: self.package}

    def record(self, job) -> dict:
        return {"compression": self.report}


class CompressStage(Stage):
    """Key: the package it compresses (its stage's key) and the quantization identity (the
    preset, the palette algorithm, a mixed-bit layer plan's content). Writes `model.mlpackage`
    and `report.json`."""

    name = "compress"
    result = Compressed

    def key_parts(self, ctx: StageContext) -> dict | None:
        if not ctx.job.compress:
            return None
        after, _ = ctx.latest_package()
        return {"after": after, "quantization": ctx.spec.quantization_identity}

    def run(self, ctx: StageContext, out: Path) -> Compressed:
        from sdbuild.package_io import save_package

        ct = import_coremltools()
        spec = ctx.spec
        model = ct.models.MLModel(str(ctx.latest_package()[1]), skip_model_load=True)
        compressed, report = compress(model, spec.quantization, ctx.job.component, spec.deployment_target,
                                      spec.layer_plan)
        save_package(compressed, out / PACKAGE, metadata=ctx.package_metadata())
        return Compressed(out / PACKAGE, CompressionInfo.model_validate(report.as_manifest()))
