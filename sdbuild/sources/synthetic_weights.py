"""Synthetic weights: every parameter of one submodel, seeded and filled in place.

Every parameter gets its own generator, seeded from (scheme, seed, submodel folder, parameter
name), so weights are bitwise-identical in any process, independent of construction order,
and one submodel is built without touching the others. Models are built with storage-less
parameters (the library's own initialisation of the sd21 UNet alone takes ~20 s) and each
parameter is then allocated once in float32 and filled in place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sdbuild.errors import SdbuildError
from sdbuild.sources.digest import canonical_json
from sdbuild.sources.models import build_from_config, model_class, quiet_loading
from sdbuild.sources.resolved import CONTROLNET_FOLDER, ResolvedSource
from sdbuild.sources.synthetic import SYNTHETIC_SCHEME_VERSION, synthetic_folders

_BIAS_RANGE = 0.05  # biases and other 1-D parameters: uniform in +-this
_NORM_SCALE_RANGE = 0.1  # 1-D ``weight``s are norm scales: uniform in 1 +- this


def build_synthetic_submodel(source: ResolvedSource, folder: str) -> torch.nn.Module:
    """The seeded float32 model of one submodel folder, in eval mode."""
    if folder not in synthetic_folders(source):
        raise SdbuildError(
            f"{source.model_id} has no submodel '{folder}'",
            f"choose from {', '.join(synthetic_folders(source))}",
        )
    config_folder = "unet" if folder == CONTROLNET_FOLDER else folder
    config = source.configs[config_folder]
    cls = model_class(folder, config)
    with quiet_loading(), _parameters_without_storage():
        model = build_from_config(cls, config)
    _fill_parameters(model, (SYNTHETIC_SCHEME_VERSION, source.seed, folder))
    return model.eval()


@contextmanager
def _parameters_without_storage() -> Iterator[None]:
    """Parameters registered inside live on the meta device (no memory, and the library's
    initialisation of them is a no-op); buffers stay real, so their values are kept."""
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _seed_of(parts: tuple) -> int:
    return int.from_bytes(hashlib.sha256(canonical_json(parts).encode()).digest()[:8], "little") >> 1


def _fill_parameters(model: torch.nn.Module, submodel_key: tuple) -> None:
    """Give every parameter float32 storage filled from its own seeded generator."""
    materialised: dict[int, torch.nn.Parameter] = {}  # keeps shared (tied) parameters shared
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                if id(param) not in materialised:
                    full_name = f"{module_name}.{name}" if module_name else name
                    generator = torch.Generator().manual_seed(_seed_of((*submodel_key, full_name)))
                    tensor = torch.empty(param.shape, dtype=torch.float32)
                    _fill(tensor, name, generator)
                    materialised[id(param)] = torch.nn.Parameter(tensor, param.requires_grad)
                module._parameters[name] = materialised[id(param)]


def _fill(tensor: torch.Tensor, name: str, generator: torch.Generator) -> None:
    if tensor.dim() >= 2:
        # torch's default scale for linear/conv/embedding weights: +-1/sqrt(fan_in)
        bound = tensor[0].numel() ** -0.5
        tensor.uniform_(-bound, bound, generator=generator)
    elif name == "weight":
        tensor.uniform_(1 - _NORM_SCALE_RANGE, 1 + _NORM_SCALE_RANGE, generator=generator)
    else:
        tensor.uniform_(-_BIAS_RANGE, _BIAS_RANGE, generator=generator)
