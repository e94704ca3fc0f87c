"""Mixed-bit layer plans: JSON files {UNet layer name: nbits} (16 = the layer stays float16) that
`sdbuild mixed-bit` writes and `quantization=mixed_bit` applies. A plan is read once, when the
recipe is validated; the cache key and the compressed bytes both come from that one copy.

The recipe names a plan with `quantization.mixed_bit_recipe`: a JSON path, or the name of one
shipped in `conf/quantization/mixed_bit_recipes/`.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdbuild.config.compression import PALETTE_NBITS, QuantizationConfig
from sdbuild.config.search_path import CONF_DIR
from sdbuild.errors import SdbuildError

LAYER_PLAN_NBITS = PALETTE_NBITS + (16,)  # 16: the layer stays float16
SHIPPED_LAYER_PLANS_DIR = CONF_DIR / "quantization" / "mixed_bit_recipes"


def layer_plan_of(cfg: QuantizationConfig) -> dict[str, int] | None:
    """The layer plan a preset applies (read from its file), or None unless mode=mixed_bit."""
    return read_layer_plan(cfg.mixed_bit_recipe) if cfg.mode == "mixed_bit" else None


def read_layer_plan(reference: str | None) -> dict[str, int]:
    """A layer plan {layer name: nbits} from a JSON path or a shipped plan's name."""
    if not reference:
        raise SdbuildError("quantization.mode=mixed_bit needs quantization.mixed_bit_recipe",
                           "make a layer plan with `sdbuild mixed-bit` and pass its JSON path, "
                           f"or name one of {', '.join(shipped_layer_plans()) or 'the shipped plans'}")
    path = layer_plan_path(reference)
    if not path.is_file():
        raise SdbuildError(f"mixed-bit layer plan '{reference}' not found (looked at {path})",
                           f"pass a JSON path, or one of: {', '.join(shipped_layer_plans())}")
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SdbuildError(f"mixed-bit layer plan {path} is not valid JSON ({exc.msg}, line {exc.lineno})",
                           "regenerate it with `sdbuild mixed-bit`") from exc
    if not isinstance(plan, dict) or not plan:
        raise SdbuildError(f"mixed-bit layer plan {path} is not a non-empty {{layer: nbits}} object",
                           "regenerate it with `sdbuild mixed-bit`")
    bad = [f"{k}={v!r}" for k, v in plan.items() if isinstance(v, bool) or v not in LAYER_PLAN_NBITS]
    if bad:
        raise SdbuildError(f"mixed-bit layer plan {path} has bit widths outside {LAYER_PLAN_NBITS}: {', '.join(bad[:3])}",
                           "use 1, 2, 4, 6, 8 or 16 (keep float16) per layer")
    return {str(k): int(v) for k, v in plan.items()}


def layer_plan_path(reference: str) -> Path:
    if reference.endswith(".json") or "/" in reference:
        return Path(reference).expanduser()
    return SHIPPED_LAYER_PLANS_DIR / f"{reference}.json"


def shipped_layer_plans() -> list[str]:
    return sorted(p.stem for p in SHIPPED_LAYER_PLANS_DIR.glob("*.json"))
