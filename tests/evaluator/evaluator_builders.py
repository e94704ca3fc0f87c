"""Tiny PyTorch components with the contract's interfaces, and their Core ML conversion.

The evaluator is tested on artifacts made here the way sdbuild makes them: diffusers and
transformers modules built from the bundled tiny configs (seeded random weights), wrapped to the
contract's input/output names, traced and converted with coremltools to an ML Program.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

import numpy as np
import torch

from sdbuild import archs, contract

SEED = 0


@contextlib.contextmanager
def quiet_conversion() -> Iterator[None]:
    """Silence third-party chatter (untested-version notices, progress bars, tracer warnings)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Torch version.*")
        warnings.filterwarnings("ignore", message=".*scikit-learn.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="coremltools")
        logger = logging.getLogger("coremltools")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def arch_info(arch: str) -> contract.ArchInfo:
    folders = [p.name for p in archs.architecture_dir(arch).iterdir() if p.is_dir()]
    return contract.ArchInfo.from_configs(
        arch, {f: archs.load_component_config(arch, f) for f in folders}
    )


def random_inputs(interface: contract.Interface, seed: int = SEED) -> dict[str, np.ndarray]:
    """float32 inputs for ``interface``: token ids, timesteps, SDXL time ids, else N(0, 1)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in interface.inputs:
        if spec.name == "input_ids":
            values = rng.integers(0, 1000, spec.shape)
        elif spec.name == "timestep":
            values = rng.integers(1, 999, spec.shape)
        elif spec.name == "time_ids":
            values = np.tile([64.0, 64.0, 0.0, 0.0, 64.0, 64.0], (spec.shape[0], 1))
        else:
            values = rng.standard_normal(spec.shape)
        # Values exactly representable in the declared dtype, so that PyTorch and the model
        # (which casts to that dtype) see the same numbers.
        inputs[spec.name] = values.astype(spec.dtype).astype(np.float32)
    return inputs


def convert(module: torch.nn.Module, interface: contract.Interface, *,
            precision: str = "float16", target: str = "iOS16", example_seed: int = SEED):
    """Trace ``module`` on random inputs and convert it to an ML Program (not loaded)."""
    import coremltools as ct

    example = random_inputs(interface, example_seed)
    tensors = tuple(torch.from_numpy(example[s.name]) for s in interface.inputs)
    with quiet_conversion(), torch.no_grad():
        traced = torch.jit.trace(module.eval(), tensors, check_trace=False)
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name=s.name, shape=s.shape, dtype=np.dtype(s.dtype).type)
                    for s in interface.inputs],
            outputs=[ct.TensorType(name=s.name, dtype=np.dtype(s.dtype).type)
                     for s in interface.outputs],
            convert_to="mlprogram",
            compute_precision=(ct.precision.FLOAT16 if precision == "float16"
                               else ct.precision.FLOAT32),
            minimum_deployment_target=getattr(ct.target, target),
            skip_model_load=True,
        )


def torch_outputs(module: torch.nn.Module, interface: contract.Interface,
                  inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outputs = module.eval()(*(torch.from_numpy(inputs[s.name]) for s in interface.inputs))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {s.name: o.numpy() for s, o in zip(interface.outputs, outputs)}


# -- components ------------------------------------------------------------------------------


class UNetWrapper(torch.nn.Module):
    """Contract layout: ``encoder_hidden_states`` (B, D, 1, S); SDXL adds time_ids/text_embeds."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, *sdxl):
        states = encoder_hidden_states.squeeze(2).transpose(1, 2)
        extra = {}
        if sdxl:
            extra["added_cond_kwargs"] = {"time_ids": sdxl[0], "text_embeds": sdxl[1]}
        return self.unet(sample, timestep, states, return_dict=False, **extra)[0]


class VAEDecoderWrapper(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z, return_dict=False)[0]


class VAEEncoderWrapper(torch.nn.Module):
    """Returns the moments (mean and log-variance), as the contract's ``latent``."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        return self.vae.quant_conv(self.vae.encoder(x))


class TextEncoderWrapper(torch.nn.Module):
    """Float ``input_ids`` in; (last or penultimate hidden state, pooled output) out."""

    def __init__(self, encoder: torch.nn.Module, penultimate: bool, projected: bool):
        super().__init__()
        self.encoder = encoder
        self.penultimate = penultimate
        self.projected = projected

    def forward(self, input_ids):
        out = self.encoder(input_ids.long(), output_hidden_states=True)
        hidden = out.hidden_states[-2] if self.penultimate else out.last_hidden_state
        pooled = out.text_embeds if self.projected else out.pooler_output
        return hidden, pooled


class EinsumAttention(torch.nn.Module):
    """A SPLIT_EINSUM-style attention block: (B, C, 1, S) activations, 1x1 convs as linear
    layers, per-head einsum attention, heads concatenated on the channel axis."""

    def __init__(self, channels: int = 32, heads: int = 4, context: int = 24):
        super().__init__()
        self.heads = heads
        self.q = torch.nn.Conv2d(channels, channels, 1, bias=False)
        self.k = torch.nn.Conv2d(context, channels, 1, bias=False)
        self.v = torch.nn.Conv2d(context, channels, 1, bias=False)
        self.out = torch.nn.Conv2d(channels, channels, 1)
        self.norm = torch.nn.GroupNorm(1, channels)

    def forward(self, hidden, context):
        x = self.norm(hidden)
        q, k, v = self.q(x), self.k(context), self.v(context)
        dim_head = q.shape[1] // self.heads
        scale = dim_head ** -0.5
        heads = []
        for h in range(self.heads):
            part = slice(h * dim_head, (h + 1) * dim_head)
            weights = torch.einsum("bchq,bchk->bkhq", q[:, part], k[:, part]) * scale
            weights = weights.softmax(dim=1)
            heads.append(torch.einsum("bkhq,bchk->bchq", weights, v[:, part]))
        return hidden + self.out(torch.cat(heads, dim=1))


EINSUM_INTERFACE = contract.Interface(
    inputs=(contract.TensorSpec("hidden", (1, 32, 1, 64), "float16"),
            contract.TensorSpec("context", (1, 24, 1, 77), "float16")),
    outputs=(contract.TensorSpec("attended", (1, 32, 1, 64), "float32"),),
)


def build_component(arch: str, component: str, latent: int = 8, batch: int = 2):
    """(seeded module, contract interface) for a tiny component of ``arch``."""
    import diffusers
    import transformers

    info = arch_info(arch)
    interface = contract.component_interface(component, info, (latent, latent), batch)
    torch.manual_seed(SEED)
    if component == contract.UNET:
        config = archs.load_component_config(arch, "unet")
        module = UNetWrapper(diffusers.UNet2DConditionModel.from_config(config))
    elif component in (contract.VAE_DECODER, contract.VAE_ENCODER):
        vae = diffusers.AutoencoderKL.from_config(archs.load_component_config(arch, "vae"))
        wrapper = VAEDecoderWrapper if component == contract.VAE_DECODER else VAEEncoderWrapper
        module = wrapper(vae)
    elif component in (contract.TEXT_ENCODER, contract.TEXT_ENCODER_2):
        config = dict(archs.load_component_config(arch, contract.SUBMODEL_OF[component]))
        projected = "CLIPTextModelWithProjection" in config.get("architectures", [])
        config = transformers.CLIPTextConfig(**{k: v for k, v in config.items()
                                                if not k.startswith("_")})
        model_class = (transformers.CLIPTextModelWithProjection if projected
                       else transformers.CLIPTextModel)
        module = TextEncoderWrapper(model_class(config), penultimate=info.is_xl,
                                    projected=projected)
    else:
        raise ValueError(f"no tiny builder for {component}")
    return module.eval(), interface
