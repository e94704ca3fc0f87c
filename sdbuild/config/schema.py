"""Typed recipe schema: Hydra structured configs that every recipe is validated against.

The primary config (`conf/build.yaml`) starts from `BuildConfig`, so a typo, an unknown key or a
value outside its enum fails at composition, before any work. Checks that need more than types
(latent multiple of 8, components the architecture has) live in `sdbuild.spec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

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


class VaePrecision(StrEnum):
    float16 = "float16"
    float32 = "float32"


@dataclass
class VaeConfig:
    """Another VAE for vae_decoder/vae_encoder (see `sdbuild.sources.vae`); source null = the model's own."""

    source: Optional[SourceKind] = None
    id: Optional[str] = None  # source=hub: a VAE repo (config.json at its root or in vae/)
    revision: Optional[str] = None
    path: Optional[str] = None  # local: an AutoencoderKL folder or a pipeline folder; file: an original-layout .safetensors
    seed: int = 0  # source=synthetic: the seed of the architecture's VAE weights
    # null: float32 for SDXL unless the VAE's config says force_upcast=false (the fp16-fixed VAE)
    precision: Optional[VaePrecision] = None


@dataclass
class ControlNetConfig:
    """One ControlNet (recipe key ``controlnet``, a list): its own weights, fitted to the model's
    UNet. hub: a Hub id; local: a diffusers ControlNetModel folder; file: an original-layout
    .safetensors; synthetic: seeded weights from the model's UNet config."""

    source: SourceKind = SourceKind.synthetic
    id: Optional[str] = None  # hub: the repo id; else the name its package carries
    revision: Optional[str] = None  # source=hub: branch, tag or commit
    path: Optional[str] = None  # local: the folder; file: the checkpoint
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
    # A second tier shared between machines: an fsspec URL (s3://bucket/prefix, file:///nfs/cache).
    remote: Optional[str] = None
    # fsspec filesystem options (endpoint_url, profile, ...); credentials come from the environment.
    remote_options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class MinPsnrConfig:
    """Verification gates in dB: each component's outputs against its PyTorch module (a component
    left unset gets `default`), and a chunked component's chunk pipeline against the whole model."""

    default: float = 35.0
    text_encoder: Optional[float] = None
    text_encoder_2: Optional[float] = None
    unet: Optional[float] = None
    refiner: Optional[float] = None
    control_unet: Optional[float] = None  # component control-unet: a key cannot hold "-"
    controlnet: Optional[float] = None
    vae_decoder: Optional[float] = None
    vae_encoder: Optional[float] = None
    safety_checker: Optional[float] = None
    chunks: float = 60.0  # chunks and whole model compute the same thing: only rounding may differ

    def for_component(self, component: str) -> float:
        threshold = getattr(self, min_psnr_key(component))
        return self.default if threshold is None else threshold


def min_psnr_key(component: str) -> str:
    """The `min_psnr` key of a component (recipes write `min_psnr.<key>=N`)."""
    return component.replace("-", "_")


@dataclass
class SweepConfig:
    """How a multirun (`-m`) reports its variants; read once at the end of the sweep."""

    preview: bool = False  # render one image per successful variant into sweep-previews.png
    prompt: str = "a photo of an astronaut riding a horse"
    seed: int = 93
    steps: int = 4


@dataclass
class LoraFileConfig:
    """One LoRA fused into the weights before tracing (kohya or diffusers/PEFT safetensors)."""

    path: str = MISSING
    scale: float = 1.0  # diffusers' fuse_lora(lora_scale=...)
    components: Optional[List[str]] = None  # unet, text_encoder, text_encoder_2; None: all it has weights for


@dataclass
class BuildConfig:
    name: str = "unnamed"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    # textual-inversion embedding files (A1111 .pt/.safetensors, diffusers learned_embeds): sdbuild.sources.embeddings
    embeddings: List[str] = field(default_factory=list)
    controlnet: List[ControlNetConfig] = field(default_factory=list)  # needs control-unet, controlnet
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
    min_psnr: MinPsnrConfig = field(default_factory=MinPsnrConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    loras: List[LoraFileConfig] = field(default_factory=list)
    lora_strict: bool = True  # a LoRA key that matches no layer: error (false: a warning with the count)


def register_configs() -> None:
    """Make the schema available to `conf/build.yaml` as `build_schema`."""
    ConfigStore.instance().store(name="build_schema", node=BuildConfig)
