"""Which torch class implements each submodel folder, and how to build one from its config."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel
from transformers.utils import logging as transformers_logging

from sdbuild.errors import SdbuildError
from sdbuild.sources.resolved import CONTROLNET_FOLDER, TEXT_ENCODER_FOLDERS

_TEXT_ENCODER_CLASSES = {cls.__name__: cls for cls in (CLIPTextModel, CLIPTextModelWithProjection)}
_FIXED_CLASSES = {
    "unet": UNet2DConditionModel,
    "vae": AutoencoderKL,
    "safety_checker": StableDiffusionSafetyChecker,
    CONTROLNET_FOLDER: ControlNetModel,
}


def model_class(folder: str, config: dict) -> type[torch.nn.Module]:
    """The class of ``folder``; text encoders by their config's ``architectures``."""
    if folder in _FIXED_CLASSES:
        return _FIXED_CLASSES[folder]
    if folder not in TEXT_ENCODER_FOLDERS:
        known = ", ".join([*_FIXED_CLASSES, *TEXT_ENCODER_FOLDERS])
        raise SdbuildError(f"unknown submodel folder '{folder}'", f"choose from {known}")
    default = "CLIPTextModelWithProjection" if folder == "text_encoder_2" else "CLIPTextModel"
    name = (config.get("architectures") or [default])[0]
    if name not in _TEXT_ENCODER_CLASSES:
        raise SdbuildError(
            f"{folder}/config.json names an unsupported text encoder class '{name}'",
            f"supported: {', '.join(_TEXT_ENCODER_CLASSES)}",
        )
    return _TEXT_ENCODER_CLASSES[name]


def is_transformers_class(cls: type[torch.nn.Module]) -> bool:
    return issubclass(cls, PreTrainedModel)


def build_from_config(cls: type[torch.nn.Module], config: dict) -> torch.nn.Module:
    """An instance of ``cls`` with the architecture ``config`` describes (weights as the
    library initialises them)."""
    if is_transformers_class(cls):
        return cls(cls.config_class.from_dict(config))
    accepted = inspect.signature(cls.__init__).parameters
    # Only the keys the class takes: a ControlNet is built from its UNet's config.
    return cls.from_config({k: v for k, v in config.items() if k in accepted})


def model_shapes(cls: type[torch.nn.Module], config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor shape of ``cls`` built from ``config``, without allocating its weights."""
    with quiet_loading(), torch.device("meta"):
        model = build_from_config(cls, config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence diffusers/transformers info, warnings and progress bars while loading.

    transformers' own progress-bar switch also flips the Hugging Face Hub's global one (and
    warns when HF_HUB_DISABLE_PROGRESS_BARS is set), so its bars are muted through a tqdm hook.
    """
    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_bar = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    previous_hook = transformers_logging.set_tqdm_hook(_silent_bar)
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous_hook)
        if diffusers_bar:
            diffusers_logging.enable_progress_bar()
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def _silent_bar(factory: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    return factory(*args, **{**kwargs, "disable": True})
