"""LoRA files fused into the weights before tracing: the recipe's ``loras`` as Additions.

Both common formats are read by diffusers' own LoRA loader (kohya ``lora_up``/``lora_down``/
``alpha`` incl. 3x3 "LoCon" convolutions, SGM block names, and diffusers/PEFT ``lora_A``/
``lora_B``), injected and fused by peft through diffusers' model helpers, then the LoRA layers
are removed, so the traced module is the plain model with changed weights. What diffusers does
not give is a per-key match report: validation converts the keys the way the loader does and
matches every LoRA layer against a storage-less (meta) copy of the submodel, so a LoRA for
another architecture or a key that matches no layer fails before any work.
"""

from __future__ import annotations

import math
import types
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from sdbuild.contract import SUBMODEL_OF
from sdbuild.errors import SdbuildError
from sdbuild.sources.digest import file_sha256
from sdbuild.sources.resolved import TEXT_ENCODER_FOLDERS
from sdbuild.sources.single_file import checked_file

if TYPE_CHECKING:
    import torch

    from sdbuild.config.schema import BuildConfig, LoraFileConfig
    from sdbuild.sources.resolved import ResolvedSource

LORA_FOLDERS = ("unet", *TEXT_ENCODER_FOLDERS)  # the submodels a LoRA can change
FORMATS_HINT = "kohya (lora_up/lora_down/alpha) and diffusers/PEFT (lora_A/lora_B) LoRA files are supported"


@dataclass(frozen=True)
class LoraLayer:
    """One layer a LoRA changes, as peft names it in the submodel, with its factors' shapes."""

    module: str
    down: tuple[int, ...]  # lora_A: (rank, in[, kh, kw])
    up: tuple[int, ...] | None  # lora_B: (out, rank[, 1, 1]); None when the file lacks it


@dataclass(frozen=True)
class LoraAddition:
    """``loras[index]``: fused into ``components`` at ``scale``; layers that match nothing are
    skipped (only with ``lora_strict=false``)."""

    kind = "lora"
    index: int
    path: Path
    sha256: str
    scale: float
    components: tuple[str, ...]
    unet_config: dict = field(hash=False, compare=False)  # maps SGM block names
    skipped: dict[str, frozenset[str]] = field(hash=False, compare=False)  # folder -> modules left out

    @property
    def folders(self) -> tuple[str, ...]:
        return self.components

    def identity(self) -> dict:
        return {"sha256": self.sha256, "scale": self.scale, "components": list(self.components),
                "peft": metadata.version("peft")}

    def apply(self, folder: str, load) -> "torch.nn.Module":
        model = load()
        if file_sha256(self.path) != self.sha256:
            raise SdbuildError(f"LoRA file '{self.path}' changed during the build",
                               "run the build again once the file is in place")
        state, alphas, adapter_metadata = read_lora(self.path, self.unet_config)
        layers = peft_state(folder, state, model)
        kept = {k: v for k, v in layers.items() if _module_of(k) not in self.skipped.get(folder, ())}
        _fuse(model, folder, {f"{folder}.{k}": v for k, v in kept.items()}, alphas, adapter_metadata,
              self.scale, f"lora_{self.index}")
        return model


def resolve_loras(build: "BuildConfig", source: "ResolvedSource") -> tuple[LoraAddition, ...]:
    """Every ``loras`` entry checked against the architecture, in recipe order; nothing loaded
    but the LoRA files themselves (small) and storage-less copies of the submodels."""
    built = {SUBMODEL_OF[c] for c in build.components}
    meta_models: dict[str, torch.nn.Module] = {}
    additions = []
    for index, entry in enumerate(build.loras):
        key = f"loras[{index}]"
        path = checked_file(entry.path, build.model.allow_pickle, key, kind="LoRA", pickle_key="model.allow_pickle")
        scale = _checked_scale(entry.scale, key)
        state, _, _ = read_lora(path, source.configs["unet"])
        _check_finite(state, path)
        has_weights = [folder for folder in LORA_FOLDERS if any(k.startswith(f"{folder}.") for k in state)]
        foreign = [k for k in state if not k.startswith(tuple(f"{folder}." for folder in LORA_FOLDERS))]
        if not has_weights and not foreign:
            raise SdbuildError(f"LoRA file '{path}' holds no LoRA weights", FORMATS_HINT)
        for folder in has_weights:
            if folder not in source.arch.components:
                raise SdbuildError(
                    f"LoRA '{path}' has {folder} weights but architecture '{source.arch.name}' has no {folder}",
                    "use a LoRA made for this architecture, or set model.architecture to the one it was made for",
                )
        components = _checked_components(entry, key, path, has_weights, built, source)
        skipped: dict[str, frozenset[str]] = {}
        unmatched = sorted({_module_of(k) for k in foreign})
        total = len(unmatched)
        for folder in has_weights:
            if folder not in meta_models:
                meta_models[folder] = meta_submodel(source.configs[folder], folder)
            layers = _layers(peft_state(folder, state, meta_models[folder]))
            total += len(layers)
            missing = _check_layers(layers, meta_models[folder], folder, path, source.arch.name)
            unmatched += [f"{folder}.{layer.module}" for layer in missing]
            skipped[folder] = frozenset(layer.module for layer in missing)
        if unmatched:
            what = (f"{len(unmatched)} of {total} LoRA layers in '{path}' match no layer of "
                    f"architecture '{source.arch.name}' (e.g. '{unmatched[0]}')")
            if build.lora_strict:
                raise SdbuildError(what, "use a LoRA made for this architecture, or set lora_strict=false "
                                         "to fuse only the layers that match")
            warnings.warn(f"{what}; they are skipped (lora_strict=false)", stacklevel=2)
        additions.append(LoraAddition(
            index=index, path=path, sha256=file_sha256(path), scale=scale, components=components,
            unet_config=source.configs["unet"], skipped=skipped,
        ))
    return tuple(additions)


def read_lora(path: Path, unet_config: dict) -> tuple[dict, dict | None, dict | None]:
    """(state dict with diffusers' ``unet.``/``text_encoder.`` prefixes, kohya network alphas,
    PEFT adapter metadata) as diffusers' Stable Diffusion LoRA loader reads the file."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    from sdbuild.sources.models import quiet_loading

    try:
        with quiet_loading():
            return StableDiffusionLoraLoaderMixin.lora_state_dict(
                str(path), unet_config=types.SimpleNamespace(**unet_config), return_lora_metadata=True,
            )
    except (ValueError, KeyError, IndexError, RuntimeError, OSError) as error:
        first = " ".join(str(error).split())[:200]
        raise SdbuildError(f"'{path}' is not a LoRA file diffusers can read ({type(error).__name__}: {first})",
                           FORMATS_HINT) from error


def peft_state(folder: str, state: dict, model: "torch.nn.Module") -> dict:
    """``folder``'s part of a read LoRA with peft's key names (``<module>.lora_A.weight`` ...) in
    ``model``, as diffusers converts them before injecting: the UNet's through its UNet rules, a
    text encoder's through the diffusers and PEFT mappings, without the ``text_model.`` level
    when ``model`` has none (transformers' CLIPTextModel no longer does)."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    prefix = f"{folder}."
    part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not part:
        return {}
    if folder == "unet":
        return part if "lora_A" in next(iter(part)) else convert_unet_state_dict_to_peft(part)
    part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    return part if hasattr(model, "text_model") else {k.removeprefix("text_model."): v for k, v in part.items()}


def _check_finite(state: dict, path: Path) -> None:
    """NaN or Inf factors fuse without complaint and give black images: refuse them here."""
    import torch

    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise SdbuildError(f"LoRA '{path}' has NaN or Inf values in '{bad}'",
                           "the file is damaged or comes from a diverged training run; re-export it")


def _module_of(peft_key: str) -> str:
    return peft_key.split(".lora_")[0]


def _layers(part: dict) -> list[LoraLayer]:
    modules = sorted({_module_of(k) for k in part})
    return [
        LoraLayer(module, tuple(part[f"{module}.lora_A.weight"].shape) if f"{module}.lora_A.weight" in part else (),
                  tuple(part[f"{module}.lora_B.weight"].shape) if f"{module}.lora_B.weight" in part else None)
        for module in modules
    ]


def _check_layers(layers: list[LoraLayer], model: "torch.nn.Module", folder: str, path: Path,
                  arch_name: str) -> list[LoraLayer]:
    """The layers that name no module of ``model``; a layer whose shapes do not fit its module
    is an error naming both (a LoRA for another architecture)."""
    import torch

    modules = dict(model.named_modules())
    unmatched = []
    for layer in layers:
        module = modules.get(layer.module)
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            unmatched.append(layer)
            continue
        weight = tuple(module.weight.shape)  # (out, in[, kh, kw])
        rank = layer.down[0] if layer.down else None
        expected_down = (rank, weight[1], *weight[2:])
        expected_up = (weight[0], rank) if len(weight) == 2 else (weight[0], rank, 1, 1)
        if layer.down != expected_down or layer.up != expected_up:
            raise SdbuildError(
                f"LoRA '{path}' does not fit architecture '{arch_name}': its {folder} layer '{layer.module}' "
                f"has factors {list(layer.up or ())} x {list(layer.down)} but that layer's weight is {list(weight)}",
                "use a LoRA made for this architecture, or set model.architecture to the one it was made for",
            )
    return unmatched


def _fuse(model, folder: str, state: dict, alphas, adapter_metadata, scale: float, name: str) -> None:
    """Inject with diffusers' loaders, fuse at ``scale`` (diffusers' fuse_lora), drop the LoRA layers."""
    from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch, fuse_text_encoder_lora
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    from sdbuild.sources.models import quiet_loading

    with quiet_loading(), warnings.catch_warnings():
        # The alphas of layers skipped under lora_strict=false name no injected layer.
        warnings.filterwarnings("ignore", message="The following alpha_pattern keys did not match")
        if folder == "unet":
            model.load_lora_adapter(state, prefix=folder, network_alphas=alphas, metadata=adapter_metadata,
                                    adapter_name=name)
            model.fuse_lora(lora_scale=scale)
            model.unload_lora()
        else:
            StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(
                state, alphas, text_encoder=model, prefix=folder, metadata=adapter_metadata, adapter_name=name,
            )
            fuse_text_encoder_lora(model, lora_scale=scale)
            _remove_text_encoder_monkey_patch(model)


def meta_submodel(config: dict, folder: str) -> "torch.nn.Module":
    """``folder``'s module without storage: names and shapes only."""
    import torch

    from sdbuild.sources.models import build_from_config, model_class, quiet_loading

    with quiet_loading(), torch.device("meta"):
        return build_from_config(model_class(folder, config), config)


def _checked_scale(scale: float, key: str) -> float:
    if not math.isfinite(scale):
        raise SdbuildError(f"{key}.scale={scale} is not a finite number", f"give a number, e.g. {key}.scale=0.8")
    return float(scale)


def _checked_components(entry: "LoraFileConfig", key: str, path: Path, has_weights: list[str], built: set[str],
                        source: "ResolvedSource") -> tuple[str, ...]:
    """The submodels to fuse into: as listed (each must be built and have weights in the file),
    or every one the file has weights for."""
    if entry.components is None:
        return tuple(has_weights)
    for component in entry.components:
        if component not in LORA_FOLDERS:
            raise SdbuildError(f"{key}.components: '{component}' is not a component a LoRA can change",
                               f"choose from {', '.join(LORA_FOLDERS)}")
        if component not in source.arch.components:
            raise SdbuildError(f"{key}.components: architecture '{source.arch.name}' has no {component}",
                               f"it has: {', '.join(f for f in LORA_FOLDERS if f in source.arch.components)}")
        if component not in built:
            raise SdbuildError(f"{key}.components: {component} is not built (components does not list it)",
                               f"add {component} to components, or drop it from {key}.components")
        if component not in has_weights:
            raise SdbuildError(f"{key}.components: LoRA '{path}' has no {component} weights",
                               f"it has weights for: {', '.join(has_weights) or 'nothing this model has'}")
    if len(set(entry.components)) != len(entry.components):
        raise SdbuildError(f"{key}.components lists a component twice", "list each component once")
    return tuple(c for c in LORA_FOLDERS if c in entry.components)
