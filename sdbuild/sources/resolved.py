"""What a resolved model source is: identity, architecture and configs, no weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from sdbuild.contract import ArchInfo
from sdbuild.errors import SdbuildError
from sdbuild.inpainting import check_unet_inputs

# Submodel folders that hold weights, in diffusers snapshot order.
WEIGHTED_FOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2", "safety_checker")
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")
TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}  # its tokenizer folder
REQUIRED_FOLDERS = ("unet", "vae")
SCHEDULER_FOLDER = "scheduler"
CONTROLNET_FOLDER = "controlnet"


@dataclass(frozen=True)
class ResolvedSource:
    """A model source pinned to exact content; cheap to make (configs only, no weights).

    ``seed`` is set for synthetic sources only (it is what their weights are generated from);
    ``allow_pickle`` is the policy the source was resolved under and loading re-checks it.
    """

    kind: str  # "hub" | "local" | "file" | "synthetic"
    model_id: str  # hub id; model.id or "local/<folder name>", "file/<file stem>"; "synthetic/<architecture>"
    revision: str | None  # hub commit hash when known; a single file's sha256
    digest: str  # sha256 hex of the exact weights + configs
    arch: ArchInfo
    configs: dict[str, dict] = field(hash=False)  # submodel folder -> config.json content
    root: Path | None  # snapshot folder for hub/local, None for synthetic
    seed: int | None = None
    allow_pickle: bool = False

    def identity(self) -> dict:
        """JSON-able identity for manifests and cache keys (no configs, no paths)."""
        identity = {
            "kind": self.kind,
            "model_id": self.model_id,
            "revision": self.revision,
            "digest": self.digest,
            "seed": self.seed,
            "arch": dataclasses.asdict(self.arch),
        }
        if not self.arch.is_inpainting:  # recorded for inpainting UNets only, so other builds keep their ids
            del identity["arch"]["unet_in_channels"]
        # A JSON round trip turns tuples into lists, so the dict equals what a manifest reads back.
        return json.loads(json.dumps(identity))


def arch_from_configs(name: str, configs: dict[str, dict], where: str) -> ArchInfo:
    """ArchInfo of ``configs``, or one clear error when they are not a Stable Diffusion model."""
    if not any(folder in configs for folder in TEXT_ENCODER_FOLDERS):
        raise SdbuildError(
            f"{where} has no text_encoder/config.json or text_encoder_2/config.json",
            "a Stable Diffusion model needs at least one text encoder folder",
        )
    try:
        arch = ArchInfo.from_configs(name, configs)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise SdbuildError(
            f"the configs in {where} do not describe a Stable Diffusion model "
            f"({type(error).__name__}: {error})",
            "check unet/config.json, vae/config.json and the text encoder configs",
        ) from error
    check_unet_inputs(arch, where)
    return arch
