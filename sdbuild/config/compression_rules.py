"""Rules of the `quantization` and `chunking` recipe nodes beyond their types: every check that
needs no model (run at validation, before any work), a preset resolved to per-weight schemes, and
what compressed bytes depend on (for cache keys). The compress stage applies the resolved rules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from sdbuild.config.compression import PALETTE_NBITS, QUANTIZATION_MODES, ChunkingConfig, QuantizationConfig
from sdbuild.config.layer_plan import layer_plan_of
from sdbuild.contract import ALL_COMPONENTS
from sdbuild.errors import SdbuildError
from sdbuild.palette import PALETTE_VERSION

DEPLOYMENT_TARGETS = ("macOS13", "macOS14", "macOS15", "iOS16", "iOS17", "iOS18")
# Per-grouped-channel palettes and int4 blocks are ML Program opset iOS18 (macOS 15) features.
IOS18_LEVEL_TARGETS = ("macOS15", "iOS18")
IOS18_ONLY_MODES = ("grouped_kmeans", "blockwise_int4")
# Ops whose weight input op_config.op_type may name (as coremltools names them in MIL).
WEIGHT_OP_TYPES = ("conv", "conv_transpose", "linear", "matmul", "einsum", "gather")
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
    by_layer_plan: dict[str, WeightScheme | None]  # a mixed-bit layer plan's layers (PyTorch names)

    def schemes(self) -> set[WeightScheme]:
        every = [self.default, *self.by_type.values(), *self.by_name.values(), *self.by_layer_plan.values()]
        return {s for s in every if s is not None}


def compression_rules(cfg: QuantizationConfig, layer_plan: dict[str, int] | None) -> CompressionRules:
    """Validate a preset (not its target) and resolve it, with the layer plan it names (see
    `layer_plan_of`) when mode=mixed_bit; SdbuildError on the first problem."""
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

    by_layer_plan: dict[str, WeightScheme | None] = {}
    if cfg.mode == "mixed_bit":
        if layer_plan is None:
            raise ValueError("quantization.mode=mixed_bit: pass the layer plan that check_compression read")
        by_layer_plan = {layer: None if nbits == 16 else WeightScheme("kmeans", nbits)
                         for layer, nbits in layer_plan.items()}
    by_name = {name: _entry_scheme(entry, cfg, f"quantization.op_config.op_name.{name}")
               for name, entry in (op_config.get("op_name") or {}).items()}
    return CompressionRules(default, by_type, by_name, by_layer_plan)


def check_compression(cfg: QuantizationConfig, target: str, components: list[str]) -> dict[str, int] | None:
    """Every check that needs no model: run before any work. ``components``: those being built.
    Returns the mixed-bit layer plan it read (None unless mode=mixed_bit): the build's one copy."""
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
    layer_plan = layer_plan_of(cfg)
    check_target(compression_rules(cfg, layer_plan), cfg, target, components)
    return layer_plan


def check_target(rules: CompressionRules, cfg: QuantizationConfig, target: str, components: list[str]) -> None:
    """iOS 18-only schemes need an iOS 18 / macOS 15 target when a built component is compressed."""
    if target in IOS18_LEVEL_TARGETS or not any(c in cfg.components for c in components):
        return
    needs_ios18 = sorted({s.mode for s in rules.schemes() if s.mode in IOS18_ONLY_MODES})
    if needs_ios18:
        raise SdbuildError(
            f"quantization {', '.join(needs_ios18)} needs deployment target iOS18 or macOS15; this build targets {target}",
            "set target=ios18 (or macos15), or use quantization=kmeans4 / linear8 which run from iOS16",
        )


def quantization_identity(cfg: QuantizationConfig, layer_plan: dict[str, int] | None) -> dict:
    """What compressed bytes depend on, for cache keys and the build id: the preset, the palette
    algorithm, and a mixed-bit layer plan's content (by path alone, an edited plan would hit a
    stale entry)."""
    identity = {"config": asdict(cfg), "palette_version": PALETTE_VERSION}
    if layer_plan is not None:
        identity["recipe"] = layer_plan  # the key's old name, kept so existing cache keys stay valid
    return identity


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


def check_chunking(cfg: ChunkingConfig, built: Sequence[str] | None = None) -> None:
    """Checks that need no model: run before any work (``built``: the build's components)."""
    unknown = [c for c in cfg.components if c not in ALL_COMPONENTS]
    if unknown:
        raise SdbuildError(f"chunking.components names unknown component {', '.join(unknown)}",
                           f"allowed: {', '.join(ALL_COMPONENTS)}")
    if built is not None and not set(built) & set(cfg.components):
        raise SdbuildError(f"chunking is on, but this build has no component to chunk ({', '.join(cfg.components)})",
                           "add unet to components, or use chunking=none")
    if cfg.num_chunks < 2:
        raise SdbuildError(f"chunking.num_chunks={cfg.num_chunks} makes no chunks", "use 2 or more, or chunking=none")
    if cfg.max_chunk_weight_mb <= 0:
        raise SdbuildError(f"chunking.max_chunk_weight_mb={cfg.max_chunk_weight_mb:g} leaves no room for weights",
                           "use a positive size in MB, e.g. 1024 for the iOS Neural Engine")
