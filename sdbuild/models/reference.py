"""The stock diffusers/transformers computation of each component, for parity checks.

Takes the contract's positional inputs (as ``build_component_module``'s modules do) and returns
the outputs in contract order, computed by the unmodified library modules.
"""

from __future__ import annotations

import torch

from sdbuild import contract
from sdbuild.attention_choice import ATTENTION_COMPONENTS
from sdbuild.contract import ArchInfo


@torch.no_grad()
def reference_outputs(component: str, submodels: dict[str, torch.nn.Module], arch: ArchInfo,
                      inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The same computation through the stock diffusers/transformers modules."""
    if component in ATTENTION_COMPONENTS:
        sample, timestep, states, *rest = inputs
        states = states.squeeze(2).transpose(1, 2)  # (B, D, 1, S) -> (B, S, D)
        added = None
        if arch.is_xl:
            time_ids, text_embeds, *rest = rest
            added = {"time_ids": time_ids, "text_embeds": text_embeds}
        if component == contract.CONTROLNET:
            down, mid = submodels["controlnet"](sample, timestep, states, rest[0],
                                                added_cond_kwargs=added, return_dict=False)
            return (*down, mid)
        residuals = {}
        if component == contract.CONTROL_UNET:
            residuals = {"down_block_additional_residuals": tuple(rest[:-1]),
                         "mid_block_additional_residual": rest[-1]}
        return submodels["unet"](sample, timestep, states, added_cond_kwargs=added,
                                 return_dict=False, **residuals)
    if component in (contract.TEXT_ENCODER, contract.TEXT_ENCODER_2):
        out = submodels[component](inputs[0].long(), output_hidden_states=True)
        if not arch.is_xl:
            return out.last_hidden_state, out.pooler_output
        pooled = out.text_embeds if component == contract.TEXT_ENCODER_2 else out.pooler_output
        return out.hidden_states[-2], pooled
    if component == contract.VAE_DECODER:
        return (submodels["vae"].decode(inputs[0]).sample,)
    if component == contract.VAE_ENCODER:
        return (submodels["vae"].encode(inputs[0]).latent_dist.parameters,)
    clip_input, images, _ = inputs
    # diffusers does not return the concept scores: only the first two outputs have a reference.
    filtered, flagged = submodels["safety_checker"].forward_onnx(clip_input, images.clone())
    return filtered, flagged.float().view(-1, 1, 1, 1)
