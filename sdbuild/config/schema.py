"""Typed recipe schema: Hydra structured configs that every recipe is validated against.

The primary config (`conf/build.yaml`) starts from `BuildConfig`, so a typo, an unknown key or a
value outside its enum fails at composition, before any work. Checks that need more than types
(latent multiple of 8, components the architecture has) live in `sdbuild.spec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore

from sdbuild.config.compression import ChunkingConfig, QuantizationConfig


class SourceKind(StrEnum):
    hub = "hub"
    local = "local"
    file = "file"  # a single-file checkpoint in the original (LDM / SGM) layout
    synthetic = "synthetic"


class AttentionImplementation(StrEnum):
    ORIGINAL = "ORIGINAL"
    SPLIT_EINSUM = "SPLIT_EINSUM"
    SPLIT_EINSUM_V2 = "SPLIT_EINSUM_V2"


class ComputeUnits(StrEnum):
    CPU_ONLY = "CPU_ONLY"
    CPU_AND_GPU = "CPU_AND_GPU"
    CPU_AND_NE = "CPU_AND_NE"
    ALL = "ALL"


class DeploymentTarget(StrEnum):
    macOS13 = "macOS13"
    macOS14 = "macOS14"
    macOS15 = "macOS15"
    iOS16 = "iOS16"
    iOS17 = "iOS17"
    iOS18 = "iOS18"


@dataclass
class ModelConfig:
    source: SourceKind = SourceKind.synthetic
    id: Optional[str] = None  # source=hub: the Hub repo id; local/file: the name packages carry
    revision: Optional[str] = None  # branch, tag or commit, for source=hub
    path: Optional[str] = None  # source=local: a diffusers folder (Hub snapshot layout); file: the checkpoint
    architecture: str = "tiny-sd21-base"  # bundled config used by source=synthetic and source=file
    tokenizer: Optional[str] = None  # for source=file: a diffusers folder whose tokenizer/ to use
    seed: int = 0  # synthetic weights' seed
    allow_pickle: bool = False  # pickle checkpoints can execute code: refused unless allowed


@dataclass
class AttentionConfig:
    implementation: AttentionImplementation = AttentionImplementation.ORIGINAL


@dataclass
class TargetConfig:
    minimum_deployment_target: DeploymentTarget = DeploymentTarget.macOS13
    compute_units: ComputeUnits = ComputeUnits.ALL  # a runtime hint, recorded in the manifest


@dataclass
class LatentConfig:
    height: Optional[int] = None  # None: the UNet's native sample size
    width: Optional[int] = None


@dataclass
class OutputConfig:
    dir: str = "outputs"


@dataclass
class CacheConfig:
    enabled: bool = True
    dir: Optional[str] = None  # None: the user cache directory (e.g. ~/.cache/sdbuild)


@dataclass
class BuildConfig:
    name: str = "unnamed"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    components: List[str] = field(
        default_factory=lambda: ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    )
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    batch_size: int = 2  # 2 runs classifier-free guidance in one UNet call; 1 = unet_batch_one
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    verify: bool = True
    # Minimum PSNR (dB) of each artifact against its PyTorch module; "default" covers the rest.
    min_psnr: Dict[str, float] = field(default_factory=lambda: {"default": 35.0})
    output: OutputConfig = field(default_factory=OutputConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)


def register_configs() -> None:
    """Make the schema available to `conf/build.yaml` as `build_schema`."""
    ConfigStore.instance().store(name="build_schema", node=BuildConfig)
