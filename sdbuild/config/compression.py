"""Recipe schema of weight compression and UNet chunking (the `quantization` and `chunking` nodes).

Presets live in `conf/quantization/*.yaml` and `conf/chunking/*.yaml`. Types are checked when the
recipe is composed; what depends on the deployment target or on files (bit widths, layer plans,
op types) is checked by `sdbuild.config.compression_rules.check_compression` before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

QUANTIZATION_MODES = (
    "none", "linear8", "kmeans", "grouped_kmeans", "blockwise_int4", "mixed_bit", "custom",
)
PALETTE_NBITS = (1, 2, 4, 6, 8)


@dataclass
class QuantizationConfig:
    # none | linear8 | kmeans | grouped_kmeans | blockwise_int4 | mixed_bit | custom
    mode: str = "none"
    nbits: Optional[int] = None  # palette size 2**nbits for kmeans / grouped_kmeans: 1, 2, 4, 6, 8
    group_size: int = 32  # grouped_kmeans: output channels sharing one palette
    block_size: int = 32  # blockwise_int4: input channels sharing one scale
    # What the reference compresses; the VAE and safety checker stay float16 unless listed here.
    components: List[str] = field(
        default_factory=lambda: ["text_encoder", "text_encoder_2", "unet", "refiner", "control-unet", "controlnet"]
    )
    # mixed_bit: a layer plan, a JSON file {layer name: nbits} (16 = keep float16), or the name
    # of one shipped in conf/quantization/mixed_bit_recipes/ (without .json).
    mixed_bit_recipe: Optional[str] = None
    # Per-op overrides, the coremltools OptimizationConfig shape: {global: E, op_type: {conv: E},
    # op_name: {<layer or const name>: E}}; E = {mode, nbits, group_size, block_size} or null
    # (keep float16). Precedence: op_name > mixed-bit layer plan > op_type > global > this preset's mode.
    op_config: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # k-means initialisation: the same seed gives the same bytes
    # Weights with at most this many elements stay float16 (the reference's 2048).
    weight_threshold: int = 2048


@dataclass
class ChunkingConfig:
    enabled: bool = False
    num_chunks: int = 2
    # The iOS Neural Engine wants each chunk under about 1 GB of weights (MiB, 2**20 bytes).
    max_chunk_weight_mb: float = 1024.0
    components: List[str] = field(default_factory=lambda: ["unet", "refiner", "control-unet"])
