"""Loading one submodel of a resolved source as a float32 torch module in eval mode."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError

from sdbuild.errors import SdbuildError
from sdbuild.sources.models import is_transformers_class, model_class, quiet_loading
from sdbuild.sources.resolved import CONTROLNET_FOLDER, ResolvedSource
from sdbuild.sources.snapshot import weight_files
from sdbuild.sources.synthetic_weights import build_synthetic_submodel


def load_submodel(source: ResolvedSource, folder: str) -> torch.nn.Module:
    """Only ``folder``'s weights are read (or, for synthetic sources, generated).

    ``folder`` is one of unet, vae, text_encoder, text_encoder_2, safety_checker; synthetic
    sources also make a ControlNet from their UNet config (``controlnet``). Any other ControlNet
    is an addition (``sdbuild.sources.controlnet``), not a folder of the model.
    """
    if source.kind == "synthetic":
        return build_synthetic_submodel(source, folder)
    if folder == CONTROLNET_FOLDER:
        raise SdbuildError(
            f"{source.model_id} has no ControlNet of its own",
            "ControlNets come from the recipe's controlnet: entries (source hub, local, file or synthetic)",
        )
    if folder not in source.configs:
        raise SdbuildError(
            f"{source.model_id} has no '{folder}' submodel",
            f"it has: {', '.join(sorted(source.configs))}",
        )
    cls = model_class(folder, source.configs[folder])
    return load_pretrained(cls, source.root / folder, source.allow_pickle, f"{folder} of {source.model_id}")


def load_pretrained(cls: type[torch.nn.Module], folder: Path, allow_pickle: bool, what: str) -> torch.nn.Module:
    """``cls`` from the config and weights in ``folder``, float32, eval mode; one-line errors."""
    weights = weight_files(folder, allow_pickle)  # re-checks the pickle policy
    dtype_key = "dtype" if is_transformers_class(cls) else "torch_dtype"
    try:
        with quiet_loading():
            model = cls.from_pretrained(folder, use_safetensors=weights.safetensors, **{dtype_key: torch.float32})
    # A damaged pickle fails in the unpickler itself (EOFError, UnpicklingError).
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, EOFError, pickle.UnpicklingError) as error:
        names = ", ".join(f"'{path}'" for path in weights.files)
        raise SdbuildError(
            f"could not load {what} from {names} ({_summary(error)})",
            "re-download or re-export the model folder; its config.json must match the weights",
        ) from error
    _check_finite(model, what)
    return model.float().eval()


def _check_finite(model: torch.nn.Module, what: str) -> None:
    """NaN or Inf weights convert without complaint and give black images: refuse them here."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = "NaN" if torch.isnan(tensor).any() else "Inf"
            raise SdbuildError(f"weight '{name}' of {what} contains {bad}",
                               "the checkpoint is damaged or comes from a diverged training run; re-export it")


def _summary(error: Exception, limit: int = 300) -> str:
    """A library error on one short line (a state-dict mismatch lists every tensor)."""
    text = " ".join(str(error).split())
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(error).__name__}: {text}"
