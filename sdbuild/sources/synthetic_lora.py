"""Synthetic LoRA files: seeded low-rank factors for a bundled architecture, written in either
common format, so LoRA builds are tested offline.

- ``kohya``: ``lora_unet_*``/``lora_te_*`` (SDXL: ``lora_te1_*``/``lora_te2_*``) with
  ``lora_down``/``lora_up``/``alpha``; attention, feed-forward and projection layers at rank 4
  (alpha 2), the resnets' 3x3 convolutions as "LoCon" layers at rank 2 (alpha 1).
- ``peft``: diffusers' own format (``unet.<module>.lora_A.weight`` ...) with the adapter
  metadata diffusers writes (rank 4, alpha 8: a scaling of 2).

    sdbuild synth-lora --architecture tiny-sd15 --format kohya --out style.safetensors [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdbuild.errors import SdbuildError
from sdbuild.package_io import replace_path, staging_path
from sdbuild.sources.lora import LORA_FOLDERS, meta_submodel
from sdbuild.sources.single_file import SAFETENSORS_SUFFIX
from sdbuild.sources.synthetic import resolve_synthetic
from sdbuild.sources.synthetic_weights import _seed_of

FORMATS = ("kohya", "peft")
_TARGETS = {  # layer name endings a LoRA trains, per submodel kind
    "unet": ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
             "conv1", "conv2"),
    "text": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}
_RANK, _ALPHA = 4, 2.0  # kohya linear layers
_CONV_RANK, _CONV_ALPHA = 2, 1.0  # kohya LoCon 3x3 convolutions
_PEFT_ALPHA = 8  # with rank 4: scaling 2
_KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
_STRENGTH = 1.5  # each factor's scale relative to a fan-in-scaled weight: a clear, stable change


def synthetic_lora_state(architecture: str, seed: int, lora_format: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, safetensors metadata) of the synthetic LoRA of (``architecture``, ``seed``)."""
    if lora_format not in FORMATS:
        raise SdbuildError(f"unknown LoRA format '{lora_format}'", f"choose from {', '.join(FORMATS)}")
    source = resolve_synthetic(architecture, seed)
    folders = [f for f in LORA_FOLDERS if f in source.configs]
    state: dict[str, torch.Tensor] = {}
    adapter_metadata: dict = {}
    for folder in folders:
        model = meta_submodel(source.configs[folder], folder)
        targets = _TARGETS["unet" if folder == "unet" else "text"]
        modules = [(name, m) for name, m in model.named_modules()
                   if name.endswith(targets) and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        # Checkpoints name CLIP's layers under text_model., as transformers 4 did.
        file_names = {name: name if folder == "unet" or name.startswith("text_model.") else f"text_model.{name}"
                      for name, _ in modules}
        for name, module in modules:
            weight = tuple(module.weight.shape)
            conv3 = len(weight) == 4 and weight[2:] != (1, 1)
            rank = _CONV_RANK if conv3 and lora_format == "kohya" else _RANK
            down_shape = (rank, *weight[1:]) if len(weight) == 4 else (rank, weight[1])
            up_shape = (weight[0], rank, 1, 1) if len(weight) == 4 else (weight[0], rank)
            down = _factor(down_shape, (seed, lora_format, folder, name, "down"))
            up = _factor(up_shape, (seed, lora_format, folder, name, "up"))
            if lora_format == "kohya":
                key = _KOHYA_PREFIX[folder] + file_names[name].replace(".", "_")
                if folder == "text_encoder" and source.arch.is_xl:
                    key = key.replace("lora_te_", "lora_te1_", 1)
                state |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                          f"{key}.alpha": torch.tensor(_CONV_ALPHA if conv3 else _ALPHA)}
            else:
                state |= {f"{folder}.{file_names[name]}.lora_A.weight": down,
                          f"{folder}.{file_names[name]}.lora_B.weight": up}
        if lora_format == "peft":
            adapter_metadata |= {f"{folder}.r": _RANK, f"{folder}.lora_alpha": _PEFT_ALPHA,
                                 f"{folder}.target_modules": sorted(name for name, _ in modules)}
    metadata = {"format": "pt"}
    if adapter_metadata:  # the header entry diffusers' save_lora_weights writes
        metadata["lora_adapter_metadata"] = json.dumps(adapter_metadata, indent=2, sort_keys=True)
    return state, metadata


def write_synthetic_lora(architecture: str, seed: int, lora_format: str, dest: Path) -> Path:
    dest = Path(dest)
    if dest.suffix != SAFETENSORS_SUFFIX:
        raise SdbuildError(f"cannot write a LoRA as '{dest}'", f"name it *{SAFETENSORS_SUFFIX}")
    state, metadata = synthetic_lora_state(architecture, seed, lora_format)
    with staging_path(dest) as staged:
        save_file(state, staged, metadata=metadata)
        replace_path(staged, dest)
    return dest


def _factor(shape: tuple[int, ...], key: tuple) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_seed_of(("lora", *key)))
    bound = _STRENGTH * (torch.Size(shape)[1:].numel() ** -0.5)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def synth_lora_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sdbuild synth-lora",
        description="Write a seeded synthetic LoRA file for a bundled architecture (offline tests and examples).",
    )
    parser.add_argument("--architecture", default="tiny-sd15", help="a bundled architecture (default tiny-sd15)")
    parser.add_argument("--format", default="kohya", choices=FORMATS, help="key layout (default kohya)")
    parser.add_argument("--seed", type=int, default=0, help="the factors' seed (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="the file to write (*.safetensors)")
    args = parser.parse_args(argv)
    print(write_synthetic_lora(args.architecture, args.seed, args.format, args.out))
    return 0
