"""Loading one submodel of a resolved source as a float32 torch module in eval mode."""

from __future__ import annotations

import pickle

import torch
from safetensors import SafetensorError

from sdbuild.errors import SdbuildError
from sdbuild.sources.models import is_transformers_class, model_class, quiet_loading
from sdbuild.sources.resolved import CONTROLNET_FOLDER, ResolvedSource
from sdbuild.sources.snapshot import weight_files
from sdbuild.sources.synthetic_weights import build_synthetic_submodel


def load_submodel(source: ResolvedSource, folder: str) -> torch.nn.Module:
    """Only ``folder``'s weights are read (or, for synthetic sources, generated).

    ``folder`` is one of unet, vae, text_encoder, text_encoder_2, safety_checker, controlnet;
    a ControlNet exists for synthetic sources only (built from the UNet config).
    """
    if source.kind == "synthetic":
        return build_synthetic_submodel(source, folder)
    if folder == CONTROLNET_FOLDER:
        raise SdbuildError(
            f"ControlNet sources are not supported yet ({source.model_id} is a {source.kind} source)",
            "build ControlNets from model.source=synthetic, or drop controlnet from the components",
        )
    if folder not in source.configs:
        raise SdbuildError(
            f"{source.model_id} has no '{folder}' submodel",
            f"it has: {', '.join(sorted(source.configs))}",
        )
    cls = model_class(folder, source.configs[folder])
    weights = weight_files(source.root / folder, source.allow_pickle)  # re-checks the pickle policy
    dtype_key = "dtype" if is_transformers_class(cls) else "torch_dtype"
    try:
        with quiet_loading():
            model = cls.from_pretrained(
                source.root, subfolder=folder, use_safetensors=weights.safetensors,
                **{dtype_key: torch.float32},
            )
    # A damaged pickle fails in the unpickler itself (EOFError, UnpicklingError).
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, EOFError, pickle.UnpicklingError) as error:
        names = ", ".join(f"'{path}'" for path in weights.files)
        raise SdbuildError(
            f"could not load {folder} of {source.model_id} from {names} ({_summary(error)})",
            "re-download or re-export the model folder; its config.json must match the weights",
        ) from error
    _check_finite(model, f"{folder} of {source.model_id}")
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
