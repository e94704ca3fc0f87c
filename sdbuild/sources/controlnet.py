"""ControlNets: the recipe's ``controlnet:`` entries, each an Addition that supplies the weights of
one ``controlnet`` package (``ControlNet_<id>.mlpackage``, manifest key ``controlnet/<id>``).

- ``hub``: a Hub repo holding a diffusers ControlNetModel (config.json + weights at its root);
- ``local``: such a folder on disk;
- ``file``: one original-layout checkpoint (lllyasviel's ``control_model.*`` keys, or diffusers
  keys in one file), converted once by diffusers' converter into a folder in sdbuild's cache
  (``<cache>/sources/controlnet-<key>``), with the config the model's UNet implies;
- ``synthetic``: seeded weights from the model's UNet config.

Resolving reads configs and hashes files (a file is converted on first use), and checks that
each ControlNet fits the model's UNet, since its residuals are added to that UNet's skips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sdbuild.contract import CONTROL_UNET, CONTROLNET, package_file_name
from sdbuild.errors import SdbuildError
from sdbuild.sources.digest import file_sha256, files_digest, json_digest
from sdbuild.sources.resolved import CONTROLNET_FOLDER, ResolvedSource
from sdbuild.sources.snapshot import read_json, weight_files, weight_globs
from sdbuild.sources.synthetic import SYNTHETIC_SCHEME_VERSION

# Bump when the conversion of ControlNet files changes: it names the converted folders.
CONTROLNET_FILE_SCHEME_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CONVERTED_PREFIX = "controlnet-"  # <cache>/sources/controlnet-<key>
# What makes a ControlNet's residuals fit a UNet's skip connections and its inputs the UNet's.
FIT_KEYS = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim", "addition_embed_type")

@dataclass(frozen=True)
class ControlNetAddition:
    """One ControlNet of the recipe: replaces the ``controlnet`` folder's module with its own."""

    kind: ClassVar[str] = CONTROLNET
    folders: ClassVar[tuple[str, ...]] = (CONTROLNET_FOLDER,)

    source: str  # hub | local | file | synthetic
    model_id: str  # the name its package carries
    revision: str | None  # hub commit; a file's sha256
    digest: str  # of config and weights (synthetic: of the UNet config and seed)
    folder: Path | None  # a diffusers ControlNet folder; None for synthetic weights
    seed: int | None  # synthetic weights' seed
    allow_pickle: bool
    model: ResolvedSource = dataclasses.field(repr=False)  # the model whose UNet it fits

    def identity(self) -> dict:
        identity = {"source": self.source, "model_id": self.model_id, "revision": self.revision,
                    "digest": self.digest}
        if self.seed is not None:
            identity["seed"] = self.seed
        return identity

    def apply(self, folder: str, load):
        if self.folder is None:
            from sdbuild.sources.synthetic_weights import build_synthetic_submodel

            return build_synthetic_submodel(dataclasses.replace(self.model, seed=self.seed), CONTROLNET_FOLDER)
        from diffusers import ControlNetModel

        from sdbuild.sources.load import load_pretrained

        return load_pretrained(ControlNetModel, self.folder, self.allow_pickle, f"ControlNet {self.model_id}")


def resolve_controlnets(entries: Sequence, components: Sequence[str], model: ResolvedSource,
                        cache_dir: Path | None) -> tuple[ControlNetAddition, ...]:
    """The recipe's ControlNets in its order, each checked against ``model``'s UNet."""
    if entries and not {CONTROL_UNET, CONTROLNET} <= set(components):
        raise SdbuildError("the recipe has controlnet entries but components lack "
                           + " and ".join(c for c in (CONTROL_UNET, CONTROLNET) if c not in components),
                           f"add {CONTROL_UNET} (the UNet that takes their residuals) and {CONTROLNET} to components")
    if not entries:
        listed = [c for c in (CONTROL_UNET, CONTROLNET) if c in components]
        if listed:
            raise SdbuildError(f"components list {' and '.join(listed)} but the recipe has no controlnet entry",
                               "add controlnet: [{source: local, path: <ControlNet folder>}] "
                               "(or hub, file, synthetic), or drop them from components")
        return ()
    controlnets = tuple(_resolve(entry, f"controlnet.{index}", model, cache_dir) for index, entry in enumerate(entries))
    packages: dict[str, str] = {}
    for index, controlnet in enumerate(controlnets):
        name = package_file_name(controlnet.model_id, CONTROLNET)
        if name in packages:
            raise SdbuildError(f"controlnet.{packages[name]} and controlnet.{index} would both be packaged as {name}",
                               f"give one of them another name: controlnet.{index}.id=<name>")
        packages[name] = str(index)
    return controlnets


def _resolve(entry, key: str, model: ResolvedSource, cache_dir: Path | None) -> ControlNetAddition:
    kind = str(entry.source)
    unet = model.configs["unet"]
    common = {"source": kind, "allow_pickle": entry.allow_pickle, "model": model}
    if kind == "synthetic":
        digest = json_digest({"unet": unet, "seed": entry.seed, "scheme": SYNTHETIC_SCHEME_VERSION})
        return ControlNetAddition(model_id=entry.id or f"synthetic/controlnet-{entry.seed}", revision=None,
                                  digest=digest, folder=None, seed=entry.seed, **common)
    if kind == "hub":
        if not entry.id:
            raise SdbuildError(f"{key}.source=hub needs {key}.id", f"set {key}.id=<org>/<ControlNet repo>")
        from sdbuild.sources.hub import fetch_snapshot

        where = f"ControlNet '{entry.id}'" + (f" at revision '{entry.revision}'" if entry.revision else "")
        # A ControlNet repo keeps its config and weights at the root, not in submodel folders.
        patterns = ["*.json", *(g.removeprefix("*/") for g in weight_globs(entry.allow_pickle))]
        folder = fetch_snapshot(entry.id, entry.revision, where, patterns)
        model_id, revision = entry.id, folder.name
    elif kind == "local":
        if not entry.path:
            raise SdbuildError(f"{key}.source=local needs {key}.path", f"set {key}.path=<ControlNet folder>")
        folder = Path(entry.path).expanduser().resolve()
        if not folder.is_dir():
            raise SdbuildError(f"ControlNet folder '{entry.path}' does not exist",
                               f"set {key}.path to a diffusers ControlNet folder (config.json, {WEIGHTS_FILE})")
        model_id, revision = entry.id or f"local/{folder.name}", None
    elif kind == "file":
        from sdbuild.sources.single_file import checked_file

        file = checked_file(entry.path, entry.allow_pickle, key)
        model_id, revision = entry.id or f"file/{file.stem}", file_sha256(file)
        folder = _converted_folder(file, model_id, model, cache_dir)
    else:
        raise SdbuildError(f"unknown {key}.source '{kind}'", "choose one of: hub, local, file, synthetic")
    digest = _check_folder(folder, entry.allow_pickle if kind != "file" else False, model_id, model)
    return ControlNetAddition(model_id=model_id, revision=revision, digest=digest, folder=folder, seed=None, **common)


def _check_folder(folder: Path, allow_pickle: bool, model_id: str, model: ResolvedSource) -> str:
    """The digest of a ControlNet folder's config and weights, once both are checked."""
    if (folder / "model_index.json").is_file():
        raise SdbuildError(f"'{folder}' is a whole pipeline, not a ControlNet",
                           "point at a diffusers ControlNetModel folder (config.json and its weights)")
    config = read_json(folder / CONFIG_FILE)
    class_name = config.get("_class_name", "ControlNetModel")
    if class_name != "ControlNetModel":
        raise SdbuildError(f"'{folder / CONFIG_FILE}' describes a {class_name}, not a ControlNetModel",
                           "point at a diffusers ControlNet folder")
    check_fit(config, model_id, model)
    weights = weight_files(folder, allow_pickle)  # a truncated or missing weights file fails here
    return files_digest(folder, [folder / CONFIG_FILE, *weights.files])


def check_fit(values: dict, model_id: str, model: ResolvedSource) -> None:
    """``values`` (a ControlNet's config, or what its tensors say) must match the model's UNet."""
    unet = model.configs["unet"]
    for key in FIT_KEYS:
        absent_is_none = key == "addition_embed_type"  # SD 1.x/2.x configs may not name it
        if not absent_is_none and (key not in values or key not in unet):
            continue
        theirs, ours = _comparable(key, values.get(key), unet), _comparable(key, unet.get(key), unet)
        if theirs != ours:
            raise SdbuildError(
                f"ControlNet {model_id} does not fit {model.model_id}: its {key} is {theirs}, the model's UNet has {ours}",
                "use a ControlNet trained for this model's family (SD 1.x, SD 2.x or SDXL base)")
    channels = values.get("conditioning_channels", 3)
    if channels != 3:
        raise SdbuildError(f"ControlNet {model_id} takes a {channels}-channel control image",
                           "Core ML Stable Diffusion apps give ControlNets an RGB image: use a 3-channel ControlNet")


def _comparable(key: str, value, unet: dict):
    """Lists as lists; layers_per_block, one number or one per block, as one per block."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if key == "layers_per_block" and isinstance(value, int):
        return [value] * len(unet["block_out_channels"])
    return value


def controlnet_config(unet: dict) -> dict:
    """The config of a ControlNet for ``unet``: its encoder half's settings, default conditioning."""
    import inspect

    from diffusers import ControlNetModel

    accepted = inspect.signature(ControlNetModel.__init__).parameters
    return {"_class_name": "ControlNetModel", **{k: v for k, v in unet.items() if k in accepted}}


def _converted_folder(file: Path, model_id: str, model: ResolvedSource, cache_dir: Path | None) -> Path:
    """The diffusers folder converted from ``file`` (converted once, named by the file's content
    and the UNet config it is converted for)."""
    unet = model.configs["unet"]
    from sdbuild.cache.location import default_cache_dir
    from sdbuild.sources.single_file import SNAPSHOTS_FOLDER

    key = json_digest({"file": file_sha256(file), "unet": unet, "scheme": CONTROLNET_FILE_SCHEME_VERSION})
    folder = Path(cache_dir or default_cache_dir()).expanduser() / SNAPSHOTS_FOLDER / f"{CONVERTED_PREFIX}{key}"
    if not folder.is_dir():
        _convert_file(file, model_id, model, folder)
    return folder


def _convert_file(file: Path, model_id: str, model: ResolvedSource, folder: Path) -> None:
    import json

    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import save_file

    from sdbuild.package_io import replace_path, staging_path
    from sdbuild.sources.models import model_shapes
    from sdbuild.sources.original_layout import CONTROLNET_PREFIX
    from sdbuild.sources.single_file import open_checkpoint, state_mismatch

    config = controlnet_config(model.configs["unet"])
    with open_checkpoint(file) as checkpoint:
        keys = list(checkpoint)
        original = any(k.startswith(CONTROLNET_PREFIX) for k in keys) or "input_hint_block.0.weight" in keys
        if not original and "controlnet_cond_embedding.conv_in.weight" not in keys:
            raise SdbuildError(f"'{file}' is not a ControlNet checkpoint (no {CONTROLNET_PREFIX}*, input_hint_block.* "
                               "or controlnet_cond_embedding.* tensors)",
                               "controlnet source=file takes a ControlNet's own .safetensors file")
        state = convert_controlnet_checkpoint(checkpoint, config) if original else {k: checkpoint[k] for k in keys}
    state = {k: v for k, v in state.items() if v is not None}  # the converter maps absent tensors to None
    check_fit(_fit_values(state), model_id, model)
    problem = state_mismatch(state, model_shapes(ControlNetModel, config))
    if problem:
        raise SdbuildError(f"ControlNet {model_id} does not fit {model.model_id}: it {problem}",
                           "use a ControlNet trained for this model's family (SD 1.x, SD 2.x or SDXL base)")
    with staging_path(folder) as staged:
        staged.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, staged / WEIGHTS_FILE, metadata={"format": "pt"})
        (staged / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        replace_path(staged, folder)


def _fit_values(state: dict) -> dict:
    """The FIT_KEYS a converted ControlNet state implies (from tensor shapes)."""
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("down_blocks.")})
    values = {
        "addition_embed_type": "text_time" if "add_embedding.linear_1.weight" in state else None,
        "block_out_channels": [int(state[f"down_blocks.{b}.resnets.0.conv1.weight"].shape[0]) for b in blocks
                               if f"down_blocks.{b}.resnets.0.conv1.weight" in state],
    }
    if "conv_in.weight" in state:
        values["in_channels"] = int(state["conv_in.weight"].shape[1])
    cross = [int(v.shape[1]) for k, v in sorted(state.items()) if k.endswith("attn2.to_k.weight")]
    if cross:
        values["cross_attention_dim"] = cross[0]
    return values
