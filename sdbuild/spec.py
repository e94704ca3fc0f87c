"""Recipe -> validated build spec: every check that needs more than the schema's types.

Order matters for the user: checks that need nothing are done first, then the source is resolved
(reads configs only, may need the network for a Hub id), then checks that need the architecture.
Everything fails here, before any weights are loaded or any file is written.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sdbuild.attention_choice import check_attention
from sdbuild.cache.remote import check_remote_config
from sdbuild.config.compression import ChunkingConfig, QuantizationConfig
from sdbuild.config.compression_rules import check_chunking, check_compression, quantization_identity
from sdbuild.config.errors import config_error
from sdbuild.config.schema import BuildConfig, MinPsnrConfig
from sdbuild.contract import ALL_COMPONENTS, ArchInfo
from sdbuild.errors import SdbuildError
from sdbuild.folders import check_folder
from sdbuild.inpainting import check_inpainting_components
from sdbuild.package_io import source_date
from sdbuild.sources import ResolvedSource, resolve_source
from sdbuild.sources.additions import Addition, identities, resolve_additions
from sdbuild.sources.vae import resolved_vae_precision
from sdbuild.versions import tool_versions

# Config keys that say where things go (or how a sweep reports), not what is built: they do not
# change the build id.
PLACEMENT_KEYS = ("output", "cache", "sweep")


@dataclass(frozen=True)
class BuildSpec:
    recipe: str
    config: dict  # the resolved recipe as plain JSON-able data, recorded in the manifest
    source: ResolvedSource
    additions: tuple[Addition, ...]  # LoRA, another VAE, embeddings, ControlNet: in apply order
    vae_precision: str  # of vae_decoder/vae_encoder: the contract's, or float16 for a float16-safe SDXL VAE
    components: tuple[str, ...]
    attention: str
    deployment_target: str
    compute_units: str
    latent_size: tuple[int, int]
    batch_size: int
    quantization: QuantizationConfig
    layer_plan: dict[str, int] | None  # a mixed-bit layer plan, read once here (None: no plan)
    # What compressed bytes depend on: the preset and the layer plan's content.
    quantization_identity: dict
    chunking: ChunkingConfig
    # SOURCE_DATE_EPOCH as a UTC date, read once here: packages carry it, so keys hold it.
    source_date: str | None
    verify: bool
    min_psnr: MinPsnrConfig
    output_root: Path
    cache_dir: Path | None
    cache_enabled: bool
    cache_remote: str | None  # an fsspec URL shared between machines, or None
    cache_remote_options: dict

    @property
    def arch(self) -> ArchInfo:
        return self.source.arch

    @property
    def build_config(self) -> dict:
        """The resolved recipe without placement keys: what the manifest records."""
        return {k: v for k, v in self.config.items() if k not in PLACEMENT_KEYS}

    @property
    def placement(self) -> dict:
        return {k: v for k, v in self.config.items() if k in PLACEMENT_KEYS}

    @property
    def build_id(self) -> str:
        """Derived from what determines the build: recipe (with a mixed-bit layer plan's content),
        source identity, the additions' contents, tool versions, and SOURCE_DATE_EPOCH's date
        when set."""
        identity = {
            "recipe": self.build_config,
            "quantization": self.quantization_identity,
            "source": self.source.identity(),
            "tools": tool_versions(),
        }
        if self.source_date is not None:  # only when set, so undated builds keep their ids
            identity["source_date"] = self.source_date
        if self.additions:  # only when there are some, so plain builds keep their ids
            identity["additions"] = identities(self.additions)
        return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]

    @property
    def output_dir(self) -> Path:
        return self.output_root / self.recipe / self.build_id


def canonical_json(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def plain_config(cfg: DictConfig) -> dict:
    """The composed config as JSON-able data (enums as their values), without Hydra's node."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    data.pop("hydra", None)
    return data


def validate(cfg: DictConfig) -> BuildSpec:
    """Check a composed recipe and resolve its source; raise SdbuildError on the first problem."""
    date = source_date()  # a bad SOURCE_DATE_EPOCH also breaks library imports (diffusers): refuse it first
    data = plain_config(cfg)
    try:
        # Re-merge into the schema: `+key=value` overrides slip past Hydra's struct mode.
        build: BuildConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(BuildConfig), data))
    except OmegaConfBaseException as exc:
        raise config_error(exc) from exc
    components = _check_components(build.components)
    latent = _check_latent(build.latent.height, build.latent.width)
    if build.batch_size not in (1, 2):
        raise SdbuildError(
            f"batch_size={build.batch_size} is not supported",
            "use 2 (classifier-free guidance in one UNet call) or 1",
        )
    _check_min_psnr(build.min_psnr)
    output_root, cache_dir = _check_placement(build)
    target = build.target.minimum_deployment_target.value
    layer_plan = check_compression(build.quantization, target, list(components))
    if build.chunking.enabled:
        check_chunking(build.chunking, components)
    if build.cache.remote:
        check_remote_config(build.cache.remote, data["cache"]["remote_options"])

    source = resolve_source(build.model, cache_dir)
    arch = source.arch
    missing = [c for c in components if not arch.supports(c)]
    if missing:
        supported = [c for c in ALL_COMPONENTS if arch.supports(c)]
        raise SdbuildError(
            f"architecture '{arch.name}' has no component {', '.join(missing)}",
            f"components for it: {', '.join(supported)}",
        )
    check_inpainting_components(arch, components)
    additions = resolve_additions(build, source, cache_dir)
    attention = build.attention.implementation.value
    for component in components:
        check_attention(component, attention, arch)
    return BuildSpec(
        recipe=build.name,
        config=data,
        source=source,
        additions=additions,
        vae_precision=resolved_vae_precision(build.vae, source, additions),
        components=components,
        attention=attention,
        deployment_target=target,
        compute_units=build.target.compute_units.value,
        latent_size=latent or (arch.default_latent_size, arch.default_latent_size),
        batch_size=build.batch_size,
        quantization=build.quantization,
        layer_plan=layer_plan,
        quantization_identity=quantization_identity(build.quantization, layer_plan),
        chunking=build.chunking,
        source_date=date,
        verify=build.verify,
        min_psnr=build.min_psnr,
        output_root=output_root,
        cache_dir=cache_dir,
        cache_enabled=build.cache.enabled,
        cache_remote=build.cache.remote,
        cache_remote_options=dict(data["cache"]["remote_options"]),
    )


def _check_components(components: list[str]) -> tuple[str, ...]:
    if not components:
        raise SdbuildError("components is empty", f"list some of: {', '.join(ALL_COMPONENTS)}")
    unknown = [c for c in components if c not in ALL_COMPONENTS]
    if unknown:
        raise SdbuildError(
            f"unknown component {', '.join(repr(c) for c in unknown)} in components",
            f"allowed: {', '.join(ALL_COMPONENTS)}",
        )
    if len(set(components)) != len(components):
        raise SdbuildError("components lists a component twice", "list each component once")
    # Build in pipeline order so progress and manifests read the same for every recipe.
    return tuple(c for c in ALL_COMPONENTS if c in components)


def _check_latent(height: int | None, width: int | None) -> tuple[int, int] | None:
    if height is None and width is None:
        return None
    if height is None or width is None:
        raise SdbuildError(
            "latent.height and latent.width must be set together",
            "set both, or neither for the model's native size",
        )
    for key, value in (("latent.height", height), ("latent.width", width)):
        if value <= 0 or value % 8:
            raise SdbuildError(
                f"{key}={value} is not a positive multiple of 8",
                "the UNet halves the latent three times; e.g. 64 for 512 px images",
            )
    return height, width


def _check_placement(build: BuildConfig) -> tuple[Path, Path | None]:
    """The output folder and cache folder; an empty output.dir would build into the working folder."""
    if not build.output.dir.strip():
        raise SdbuildError("output.dir is empty", "set output.dir to a folder, e.g. output.dir=outputs")
    output_root = Path(build.output.dir).expanduser()
    check_folder(output_root, "output.dir")
    cache_dir = Path(build.cache.dir).expanduser() if build.cache.dir else None
    if cache_dir is not None and build.cache.enabled:
        check_folder(cache_dir, "cache.dir")
    return output_root, cache_dir


def _check_min_psnr(min_psnr: MinPsnrConfig) -> None:
    """A gate must be able to fail and to pass: NaN fails no comparison, infinity passes none."""
    for gate in fields(min_psnr):
        threshold = getattr(min_psnr, gate.name)
        if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
            example = MinPsnrConfig.default if gate.default is None else gate.default
            raise SdbuildError(
                f"min_psnr.{gate.name}={threshold} is not a usable threshold",
                f"give a finite number of dB, 0 or more, e.g. min_psnr.{gate.name}={example:g}",
            )
