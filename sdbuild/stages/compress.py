"""Compress stage: weight palettization / linear quantization of a converted ML Program.

A preset (`conf/quantization/*.yaml`) becomes one decision per weight tensor, by precedence
op_config.op_name > a mixed-bit recipe's layer > op_config.op_type > op_config.global > the
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
from typing import TYPE_CHECKING, Any

import numpy as np

from sdbuild.config.compression import PALETTE_NBITS, QUANTIZATION_MODES, QuantizationConfig
from sdbuild.contract import ALL_COMPONENTS
from sdbuild.errors import SdbuildError
from sdbuild.manifest import CompressionInfo
from sdbuild.palette import PALETTE_VERSION, KMeansPalette
from sdbuild.quiet import quiet_coremltools
from sdbuild.stages.stage import PACKAGE, REPORT, Stage, StageContext, StageResult

if TYPE_CHECKING:
    import coremltools as ct
    from coremltools.converters.mil.mil import Program

DEPLOYMENT_TARGETS = ("macOS13", "macOS14", "macOS15", "iOS16", "iOS17", "iOS18")
# Per-grouped-channel palettes and int4 blocks are ML Program opset iOS18 (macOS 15) features.
IOS18_LEVEL_TARGETS = ("macOS15", "iOS18")
IOS18_ONLY_MODES = ("grouped_kmeans", "blockwise_int4")
# Ops whose weight input op_config.op_type may name (as coremltools names them in MIL).
WEIGHT_OP_TYPES = ("conv", "conv_transpose", "linear", "matmul", "einsum", "gather")
RECIPE_NBITS = PALETTE_NBITS + (16,)  # 16: the layer stays float16
SHIPPED_RECIPES_DIR = Path(__file__).resolve().parents[2] / "conf" / "quantization" / "mixed_bit_recipes"
_ENTRY_KEYS = ("mode", "nbits", "group_size", "block_size")
_OP_CONFIG_KEYS = ("global", "op_type", "op_name")


# ----------------------------------------------------------------------------------------------
# Preset -> rules


@dataclass(frozen=True)
class WeightScheme:
    """How one weight tensor is stored: palette (kmeans, grouped_kmeans) or integers."""

    mode: str  # kmeans | grouped_kmeans | linear8 | blockwise_int4
    nbits: int  # bits per weight element
    group_size: int = 0  # grouped_kmeans
    block_size: int = 0  # blockwise_int4


@dataclass(frozen=True)
class CompressionRules:
    """A preset resolved to schemes; None means: keep float16."""

    default: WeightScheme | None
    by_type: dict[str, WeightScheme | None]
    by_name: dict[str, WeightScheme | None]  # op_config.op_name: written by hand, must all match
    by_recipe: dict[str, WeightScheme | None]  # mixed-bit recipe layers (PyTorch names)

    def schemes(self) -> set[WeightScheme]:
        every = [self.default, *self.by_type.values(), *self.by_name.values(), *self.by_recipe.values()]
        return {s for s in every if s is not None}


def compression_rules(cfg: QuantizationConfig) -> CompressionRules:
    """Validate a preset (not its target) and resolve it; SdbuildError on the first problem."""
    if cfg.mode not in QUANTIZATION_MODES:
        raise SdbuildError(f"unknown quantization.mode '{cfg.mode}'", f"choose one of: {', '.join(QUANTIZATION_MODES)}")
    op_config = _plain(cfg.op_config) or {}
    unknown = sorted(set(op_config) - set(_OP_CONFIG_KEYS))
    if unknown:
        raise SdbuildError(f"quantization.op_config has unknown key {', '.join(unknown)}",
                           f"use {', '.join(_OP_CONFIG_KEYS)}")
    if cfg.mode == "custom" and not op_config:
        raise SdbuildError("quantization.mode=custom needs quantization.op_config",
                           "set op_config.global, op_config.op_type or op_config.op_name")

    if cfg.mode in ("none", "mixed_bit", "custom"):
        default = None
    else:
        default = _scheme(cfg.mode, cfg.nbits, cfg.group_size, cfg.block_size, "quantization")
    if "global" in op_config:
        default = _entry_scheme(op_config["global"], cfg, "quantization.op_config.global")

    # The reference leaves embedding tables (gather) alone; op_config.op_type.gather may opt in.
    by_type: dict[str, WeightScheme | None] = {"gather": None}
    for op_type, entry in (op_config.get("op_type") or {}).items():
        if op_type not in WEIGHT_OP_TYPES:
            raise SdbuildError(f"quantization.op_config.op_type names unknown op type '{op_type}'",
                               f"op types with weights: {', '.join(WEIGHT_OP_TYPES)}")
        by_type[op_type] = _entry_scheme(entry, cfg, f"quantization.op_config.op_type.{op_type}")

    by_recipe: dict[str, WeightScheme | None] = {}
    if cfg.mode == "mixed_bit":
        by_recipe = {layer: None if nbits == 16 else WeightScheme("kmeans", nbits)
                     for layer, nbits in read_recipe(cfg.mixed_bit_recipe).items()}
    by_name = {name: _entry_scheme(entry, cfg, f"quantization.op_config.op_name.{name}")
               for name, entry in (op_config.get("op_name") or {}).items()}
    return CompressionRules(default, by_type, by_name, by_recipe)


def check_compression(cfg: QuantizationConfig, target: str, components: list[str]) -> None:
    """Every check that needs no model: run before any work. ``components``: those being built."""
    if target not in DEPLOYMENT_TARGETS:
        raise SdbuildError(f"unknown deployment target '{target}'", f"choose one of: {', '.join(DEPLOYMENT_TARGETS)}")
    unknown = [c for c in cfg.components if c not in ALL_COMPONENTS]
    if unknown:
        raise SdbuildError(f"quantization.components names unknown component {', '.join(unknown)}",
                           f"allowed: {', '.join(ALL_COMPONENTS)}")
    if cfg.weight_threshold < 0:
        raise SdbuildError(f"quantization.weight_threshold={cfg.weight_threshold} is negative",
                           "use 0 or more elements (the reference uses 2048)")
    if cfg.mode == "none" and _plain(cfg.op_config):
        raise SdbuildError("quantization.op_config is set but quantization.mode is none, so it would be ignored",
                           "set quantization.mode=custom (or a preset) to apply op_config")
    rules = compression_rules(cfg)
    if target in IOS18_LEVEL_TARGETS or not any(c in cfg.components for c in components):
        return
    needs_ios18 = sorted({s.mode for s in rules.schemes() if s.mode in IOS18_ONLY_MODES})
    if needs_ios18:
        raise SdbuildError(
            f"quantization {', '.join(needs_ios18)} needs deployment target iOS18 or macOS15; this build targets {target}",
            "set target=ios18 (or macos15), or use quantization=kmeans4 / linear8 which run from iOS16",
        )


def quantization_identity(cfg: QuantizationConfig) -> dict:
    """What compressed bytes depend on, for cache keys: the preset, the palette algorithm, and a
    mixed-bit recipe's content (by path alone, an edited recipe would hit a stale entry)."""
    identity = {"config": asdict(cfg), "palette_version": PALETTE_VERSION}
    if cfg.mode == "mixed_bit":
        identity["recipe"] = read_recipe(cfg.mixed_bit_recipe)
    return identity


def read_recipe(reference: str | None) -> dict[str, int]:
    """A mixed-bit recipe {layer name: nbits} from a JSON path or a shipped recipe's name."""
    if not reference:
        raise SdbuildError("quantization.mode=mixed_bit needs quantization.mixed_bit_recipe",
                           "make one with `python -m sdbuild.mixed_bit` and pass its JSON path, "
                           f"or name one of {', '.join(shipped_recipes()) or 'the shipped recipes'}")
    path = recipe_path(reference)
    if not path.is_file():
        raise SdbuildError(f"mixed-bit recipe '{reference}' not found (looked at {path})",
                           f"pass a JSON path, or one of: {', '.join(shipped_recipes())}")
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SdbuildError(f"mixed-bit recipe {path} is not valid JSON ({exc.msg}, line {exc.lineno})",
                           "regenerate it with `python -m sdbuild.mixed_bit`") from exc
    if not isinstance(recipe, dict) or not recipe:
        raise SdbuildError(f"mixed-bit recipe {path} is not a non-empty {{layer: nbits}} object",
                           "regenerate it with `python -m sdbuild.mixed_bit`")
    bad = [f"{k}={v!r}" for k, v in recipe.items() if isinstance(v, bool) or v not in RECIPE_NBITS]
    if bad:
        raise SdbuildError(f"mixed-bit recipe {path} has bit widths outside {RECIPE_NBITS}: {', '.join(bad[:3])}",
                           "use 1, 2, 4, 6, 8 or 16 (keep float16) per layer")
    return {str(k): int(v) for k, v in recipe.items()}


def recipe_path(reference: str) -> Path:
    if reference.endswith(".json") or "/" in reference:
        return Path(reference).expanduser()
    return SHIPPED_RECIPES_DIR / f"{reference}.json"


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in SHIPPED_RECIPES_DIR.glob("*.json"))


def _scheme(mode: str, nbits: Any, group_size: Any, block_size: Any, where: str) -> WeightScheme | None:
    if mode == "none":
        return None
    if mode in ("kmeans", "grouped_kmeans"):
        if nbits not in PALETTE_NBITS or isinstance(nbits, bool):
            raise SdbuildError(f"{where}: {mode} needs nbits in {PALETTE_NBITS}, got {nbits!r}",
                               "e.g. quantization=kmeans6, or set nbits")
        if mode == "kmeans":
            return WeightScheme(mode, nbits)
        _check_positive(group_size, "group_size", where)
        return WeightScheme(mode, nbits, group_size=group_size)
    if mode == "linear8":
        return WeightScheme(mode, 8)
    if mode == "blockwise_int4":
        _check_positive(block_size, "block_size", where)
        return WeightScheme(mode, 4, block_size=block_size)
    raise SdbuildError(f"{where}: unknown weight mode '{mode}'",
                       "use none, kmeans, grouped_kmeans, linear8 or blockwise_int4")


def _entry_scheme(entry: Any, cfg: QuantizationConfig, where: str) -> WeightScheme | None:
    """One op_config entry; unset fields fall back to the preset's own."""
    if entry is None:
        return None
    if not isinstance(entry, dict) or "mode" not in entry:
        raise SdbuildError(f"{where} must be null or a mapping with a mode",
                           "e.g. {mode: kmeans, nbits: 4}, or null to keep float16")
    unknown = sorted(set(entry) - set(_ENTRY_KEYS))
    if unknown:
        raise SdbuildError(f"{where} has unknown key {', '.join(unknown)}", f"keys: {', '.join(_ENTRY_KEYS)}")
    return _scheme(entry["mode"], entry.get("nbits", cfg.nbits), entry.get("group_size", cfg.group_size),
                   entry.get("block_size", cfg.block_size), where)


def _check_positive(value: Any, key: str, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SdbuildError(f"{where}: {key} must be a positive integer, got {value!r}", f"e.g. {key}=32")


def _plain(value: Any) -> Any:
    """op_config as plain dicts/lists, whether it came from OmegaConf or from Python."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


# ----------------------------------------------------------------------------------------------
# Weights of an ML Program


@dataclass(frozen=True)
class WeightTensor:
    name: str  # the float const, or the constexpr op that decompresses it
    elements: int
    storage_bits: int  # indices + palettes + scales, as stored
    element_bits: int  # bits per element: 16 or 32 if float, else the index/integer width
    consumers: tuple[str, ...]  # op types reading it
    consumer_names: tuple[str, ...]
    compressed: bool


def load_program(model: "ct.models.MLModel | Path | str") -> "Program":
    """The MIL program of a saved or in-memory ML Program (a fresh copy, safe to edit)."""
    ct = quiet_coremltools()
    from coremltools.converters.mil.frontend.milproto import load as milproto

    if not isinstance(model, ct.models.MLModel):
        model = ct.models.MLModel(str(model), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise SdbuildError("only ML Programs can be compressed or chunked", "convert with convert_to='mlprogram'")
    return milproto.load(spec, spec.specificationVersion, model.weights_dir)


def weight_tensors(prog: "Program") -> list[WeightTensor]:
    """Every weight of the main function: non-scalar float consts and decompressing constexprs."""
    result = []
    for op in prog.functions["main"].operations:
        out = op.outputs[0]
        readers = [c for c in out.child_ops if not c.op_type.startswith("constexpr_")]
        if op.op_type.startswith("constexpr_") and readers:
            stored = _constexpr_sources(op)
            bits = [storage_bits(c) for c in stored]
            elements = int(np.prod(out.shape))
            result.append(WeightTensor(op.name, elements, sum(bits), round(max(bits) / elements),
                                       _types(readers), _names(readers), True))
        elif op.op_type == "const" and readers and _is_float_tensor(out):
            result.append(WeightTensor(op.name, int(np.prod(out.shape)), storage_bits(op),
                                       out.dtype.get_bitwidth(), _types(readers), _names(readers), False))
    return result


def _constexpr_sources(op) -> list:
    """The const ops a (chain of) constexpr op(s) decompresses from."""
    sources = []
    for var in op.inputs.values():
        producer = var.op
        if producer is None:
            continue
        if producer.op_type == "const":
            sources.append(producer)
        elif producer.op_type.startswith("constexpr_"):
            sources.extend(_constexpr_sources(producer))
    return sources


def storage_bits(const_op) -> int:
    """Bits a const op stores (sub-byte dtypes at their width); 0 for strings and bools, which
    are a few bytes of the program, not weights."""
    out = const_op.outputs[0]
    if not hasattr(out.dtype, "get_bitwidth"):
        return 0
    return int(np.prod(out.shape or ())) * out.dtype.get_bitwidth()


def _is_float_tensor(var) -> bool:
    from coremltools.converters.mil.mil import types

    return bool(var.shape) and types.is_tensor(var.sym_type) and types.is_float(var.dtype)


def _types(ops) -> tuple[str, ...]:
    return tuple(sorted({o.op_type for o in ops}))


def _names(ops) -> tuple[str, ...]:
    return tuple(sorted({o.name for o in ops}))


# ----------------------------------------------------------------------------------------------
# The stage


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
    unmatched_recipe_layers: list[str] = field(default_factory=list)  # kept float16

    def as_manifest(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k in ("mode", "nbits", "avg_bits_per_weight", "weight_bytes_before", "weight_bytes_after")}


def compress(model: "ct.models.MLModel", cfg: QuantizationConfig, component: str, target: str
             ) -> tuple["ct.models.MLModel", CompressionReport]:
    """Apply ``cfg`` to ``model``; unchanged (mode "none") if the preset does not cover ``component``."""
    prog = load_program(model)
    before = weight_tensors(prog)
    if cfg.mode == "none" or component not in cfg.components:
        return model, _report("none", before, before)
    check_compression(cfg, target, [component])
    rules = compression_rules(cfg)
    _check_opset(prog, rules, component)
    decisions, unmatched = _decide(before, rules, component)
    if unmatched:
        # A converter may fuse a weight with a neighbouring op (e.g. a scale folded into a conv),
        # which drops its layer name: those layers keep float16 and the report lists them.
        warnings.warn(f"{len(unmatched)} mixed-bit recipe layer(s) name no weight of this {component} "
                      f"and stay float16: {', '.join(unmatched[:5])}", stacklevel=2)
    _apply(prog, decisions, cfg)
    compressed = program_to_model(prog, model.get_spec())
    report = _report(cfg.mode, before, weight_tensors(prog))
    report.unmatched_recipe_layers = unmatched
    return compressed, report


def program_to_model(prog: "Program", source_spec) -> "ct.models.MLModel":
    """Serialize ``prog`` as an ML Program of ``source_spec``'s version, without re-optimizing it."""
    ct = quiet_coremltools()
    from coremltools.converters.mil.converter import mil_convert

    # The program was optimized at conversion; compression and chunking only swap constants or
    # cut the graph, so the main pass pipeline is skipped (it takes minutes on a real UNet).
    return mil_convert(
        prog,
        convert_from="milinternal",
        convert_to="mlprogram",
        compute_units=ct.ComputeUnit.ALL,
        specification_version=source_spec.specificationVersion,
        pass_pipeline=ct.PassPipeline.EMPTY,
        skip_model_load=True,
    )


def _check_opset(prog: "Program", rules: CompressionRules, component: str) -> None:
    ct = quiet_coremltools()
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
    """const name -> scheme for every float weight the rules compress, and the recipe layers
    that name no weight (they stay float16)."""
    named, missing = _match_names(weights, rules.by_name)
    if missing:
        raise SdbuildError(
            f"quantization.op_config.op_name names {len(missing)} weight(s) this {component} does not have: "
            f"{', '.join(missing[:3])}",
            "use a PyTorch layer name (down_blocks.0.resnets.0.conv1), a Core ML const or op name",
        )
    from_recipe, unmatched = _match_names(weights, rules.by_recipe)
    if rules.by_recipe and not from_recipe:
        raise SdbuildError(
            f"no layer of the mixed-bit recipe names a weight of this {component} (e.g. {', '.join(unmatched[:3])})",
            "the recipe was made for another model: run `python -m sdbuild.mixed_bit` on this one",
        )
    decisions = {}
    for weight in weights:
        if weight.compressed:
            continue
        if weight.name in named or weight.name in from_recipe:
            scheme = named[weight.name] if weight.name in named else from_recipe[weight.name]
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
    quiet_coremltools()
    import coremltools.optimize.coreml as cto  # registers the compression passes
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    configs = {scheme: _op_config(scheme, cfg) for scheme in set(decisions.values())}
    palettes = {n: configs[s] for n, s in decisions.items() if s.mode in ("kmeans", "grouped_kmeans")}
    integers = {n: configs[s] for n, s in decisions.items() if s.mode in ("linear8", "blockwise_int4")}
    for pass_name, by_name in (("compression::palettize_weights", palettes),
                               ("compression::linear_quantize_weights", integers)):
        if by_name:
            graph_pass = PASS_REGISTRY[pass_name]
            graph_pass.set_options([PassOption("config", cto.OptimizationConfig(op_name_configs=by_name))])
            graph_pass.apply(prog)


def _op_config(scheme: WeightScheme, cfg: QuantizationConfig):
    import coremltools.optimize.coreml as cto

    threshold = cfg.weight_threshold
    if scheme.mode == "kmeans":
        return cto.OpPalettizerConfig(mode="custom", lut_function=KMeansPalette(scheme.nbits, cfg.seed),
                                      weight_threshold=threshold)
    if scheme.mode == "grouped_kmeans":
        return cto.OpPalettizerConfig(mode="custom", lut_function=KMeansPalette(scheme.nbits, cfg.seed),
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
    preset, the palette algorithm, a mixed-bit layer file's content). Writes `model.mlpackage`
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

        ct = quiet_coremltools()
        spec = ctx.spec
        model = ct.models.MLModel(str(ctx.latest_package()[1]), skip_model_load=True)
        compressed, report = compress(model, spec.quantization, ctx.job.component, spec.deployment_target)
        save_package(compressed, out / PACKAGE, metadata=ctx.package_metadata())
        return Compressed(out / PACKAGE, CompressionInfo.model_validate(report.as_manifest()))
