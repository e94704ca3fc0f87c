"""Synthetic ControlNets on disk: a seeded ControlNet for a bundled architecture, written as a
diffusers ControlNetModel folder or as one original-layout file (lllyasviel's ``control_model.*``
keys), so recipes and tests use ``controlnet`` sources local and file offline.

Both hold the weights of ``controlnet: [{source: synthetic, seed: N}]`` on that architecture.

    sdbuild synth-controlnet --architecture tiny-sd15 --out controlnet/ [--seed 0]
    sdbuild synth-controlnet --architecture tiny-sd15 --out controlnet.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.package_io import replace_path, staging_path
from sdbuild.sources.resolved import CONTROLNET_FOLDER
from sdbuild.sources.single_file import SAFETENSORS_SUFFIX
from sdbuild.sources.synthetic import resolve_synthetic


def write_synthetic_controlnet(architecture: str, seed: int, dest: Path) -> Path:
    """Write the synthetic ControlNet of (``architecture``, ``seed``) to ``dest``: a folder, or
    one original-layout file when ``dest`` ends in .safetensors. Replaces ``dest`` whole."""
    from safetensors.torch import save_file

    from sdbuild.sources.models import quiet_loading
    from sdbuild.sources.original_layout import original_controlnet_state_dict
    from sdbuild.sources.synthetic_weights import build_synthetic_submodel

    dest = Path(dest)
    source = resolve_synthetic(architecture, seed)
    if dest.suffix == SAFETENSORS_SUFFIX and source.arch.is_xl:
        raise SdbuildError("SDXL ControlNets are published as diffusers folders, not in the original layout",
                           "write a folder: --out <folder>")
    model = build_synthetic_submodel(source, CONTROLNET_FOLDER)
    with staging_path(dest) as staged:
        if dest.suffix == SAFETENSORS_SUFFIX:
            state = original_controlnet_state_dict(source.configs["unet"], model.state_dict())
            save_file({k: v.contiguous() for k, v in state.items()}, staged, metadata={"format": "pt"})
        else:
            with quiet_loading():
                model.save_pretrained(staged)
        replace_path(staged, dest)
    return dest


def synth_controlnet_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sdbuild synth-controlnet",
        description="Write a seeded ControlNet for a bundled architecture: a diffusers folder, or one "
                    "original-layout .safetensors file.",
    )
    parser.add_argument("--architecture", default="tiny-sd15", help="a bundled architecture (default tiny-sd15)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic weights' seed (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="a folder, or a *.safetensors file")
    args = parser.parse_args(argv)
    print(write_synthetic_controlnet(args.architecture, args.seed, args.out))
    return 0
