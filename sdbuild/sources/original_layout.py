"""The original key layout of single-file checkpoints (CompVis LDM for SD 1.x/2.x, Stability's
SGM for SDXL): where each submodel lives in the file, which layout a file has, and the mapping
from diffusers' parameter names to the original ones.

Reading a file goes the other way through diffusers' own converters (``sources.file``); this
direction exists to write synthetic single files, so both routes meet on the same weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # validation reads the layout's names; only writing files needs torch
    import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CONTROLNET_PREFIX = "control_model."  # a ControlNet file's tensors (lllyasviel's layout)

# Text encoder key prefix per (family, folder), and whether it is in OpenCLIP's layout (fused
# q/k/v, resblocks) rather than Hugging Face CLIP's (``transformer.text_model.*``).
TEXT_ENCODER_LAYOUTS: dict[str, dict[str, tuple[str, bool]]] = {
    "sd1": {"text_encoder": ("cond_stage_model.transformer.", False)},
    "sd2": {"text_encoder": ("cond_stage_model.model.", True)},
    "sdxl": {
        "text_encoder": ("conditioner.embedders.0.transformer.", False),
        "text_encoder_2": ("conditioner.embedders.1.model.", True),
    },
}
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL base", "sdxl-refiner": "SDXL refiner"}
# The SDXL refiner has only OpenCLIP bigG, in the first embedder slot: recognised, to be named.
_REFINER_TEXT_PREFIX = "conditioner.embedders.0.model."

_UNET_RESNET_NAMES = (
    ("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."),
)
_VAE_ATTENTION_NAMES = (
    ("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)
_OPEN_CLIP_NAMES = (
    ("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."),
)


def detect_family(keys: Iterable[str]) -> str | None:
    """``sd1``, ``sd2``, ``sdxl`` or ``sdxl-refiner`` from the text encoder keys; None if unknown."""
    keys = list(keys)

    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in keys)

    for family in ("sdxl", "sd2", "sd1"):
        if all(has(prefix) for prefix, _ in TEXT_ENCODER_LAYOUTS[family].values()):
            return family
    return "sdxl-refiner" if has(_REFINER_TEXT_PREFIX) else None


def original_state_dict(family: str, folder: str, config: dict, state: dict) -> dict[str, torch.Tensor]:
    """One submodel's diffusers ``state`` under its original names (prefix included)."""
    if folder == "unet":
        return _renamed(state, UNET_PREFIX, _unet_prefix_map(config), _UNET_RESNET_NAMES)
    if folder == "vae":
        return _vae(state, config)
    prefix, open_clip = TEXT_ENCODER_LAYOUTS[family][folder]
    # transformers' CLIPTextModel keeps no ``text_model.`` level; the original files have it.
    state = {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
             for k, v in state.items()}
    if open_clip:
        return _open_clip(state, prefix)
    return {f"{prefix}{key}": tensor for key, tensor in state.items()}


def original_controlnet_state_dict(unet_config: dict, state: dict) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet's ``state`` under its original names: the UNet's encoder half
    (mapped as the UNet's is), the hint block, the zero convolutions and the mid block's output."""
    embedding_blocks = len({k.split(".")[2] for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    pairs = [
        *_unet_prefix_map(unet_config),
        ("controlnet_mid_block.", "middle_block_out.0."),
        ("controlnet_cond_embedding.conv_in.", "input_hint_block.0."),
        # the hint block interleaves SiLU layers, so its convolutions sit at even indices
        ("controlnet_cond_embedding.conv_out.", f"input_hint_block.{2 * (embedding_blocks + 1)}."),
        *((f"controlnet_cond_embedding.blocks.{j}.", f"input_hint_block.{2 * (j + 1)}.")
          for j in range(embedding_blocks)),
        *((f"controlnet_down_blocks.{i}.", f"zero_convs.{i}.0.")
          for i in range(len({k.split(".")[1] for k in state if k.startswith("controlnet_down_blocks.")}))),
    ]
    return _renamed(state, CONTROLNET_PREFIX, pairs, _UNET_RESNET_NAMES)


def _renamed(state: dict, prefix: str, prefix_map: list[tuple[str, str]],
             resnet_names: tuple[tuple[str, str], ...] = ()) -> dict:
    """Replace each key's longest matching diffusers prefix by its original one; below resnet
    prefixes the layer names are mapped too."""
    prefix_map = sorted(prefix_map, key=lambda pair: -len(pair[0]))
    out = {}
    for key, tensor in state.items():
        matched = next(((d, ldm) for d, ldm in prefix_map if key.startswith(d)), None)
        if matched is None:
            out[prefix + key] = tensor
            continue
        rest = key[len(matched[0]):]
        if ".resnets." in matched[0]:
            rest = _rename_start(rest, resnet_names)
        out[prefix + matched[1] + rest] = tensor
    return out


def _rename_start(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """``name`` with its first matching leading part replaced (unchanged if none matches)."""
    for old, new in pairs:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _unet_prefix_map(config: dict) -> list[tuple[str, str]]:
    """Diffusers UNet module prefixes -> LDM ``input_blocks``/``middle_block``/``output_blocks``."""
    blocks = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for block in range(blocks):
        for layer in range(layers):
            index = 1 + block * (layers + 1) + layer
            pairs += [(f"down_blocks.{block}.resnets.{layer}.", f"input_blocks.{index}.0."),
                      (f"down_blocks.{block}.attentions.{layer}.", f"input_blocks.{index}.1.")]
        if block < blocks - 1:
            pairs.append((f"down_blocks.{block}.downsamplers.0.conv.",
                          f"input_blocks.{(block + 1) * (layers + 1)}.0.op."))
    for block, kind in enumerate(config["up_block_types"]):
        for layer in range(layers + 1):
            index = block * (layers + 1) + layer
            pairs += [(f"up_blocks.{block}.resnets.{layer}.", f"output_blocks.{index}.0."),
                      (f"up_blocks.{block}.attentions.{layer}.", f"output_blocks.{index}.1.")]
        if block < blocks - 1:
            # the upsampler follows the resnet (and the attention, in cross-attention blocks)
            slot = 2 if kind.startswith("CrossAttn") else 1
            pairs.append((f"up_blocks.{block}.upsamplers.0.", f"output_blocks.{index}.{slot}."))
    return pairs


def _vae(state: dict, config: dict) -> dict:
    blocks = len(config["block_out_channels"])
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
                  (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
                  (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")]
    for block in range(blocks):
        up = blocks - 1 - block  # LDM numbers decoder levels from the lowest resolution
        pairs += [(f"encoder.down_blocks.{block}.resnets.", f"encoder.down.{block}.block."),
                  (f"encoder.down_blocks.{block}.downsamplers.0.", f"encoder.down.{block}.downsample."),
                  (f"decoder.up_blocks.{block}.resnets.", f"decoder.up.{up}.block."),
                  (f"decoder.up_blocks.{block}.upsamplers.0.", f"decoder.up.{up}.upsample.")]
    renamed = _renamed(state, VAE_PREFIX, pairs)
    out = {}
    for key, tensor in renamed.items():
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in key:
            for diffusers_name, ldm_name in _VAE_ATTENTION_NAMES:
                key = key.replace(f".attn_1.{diffusers_name}", f".attn_1.{ldm_name}")
            if tensor.dim() == 2:  # LDM's attention projections are 1x1 convolutions
                tensor = tensor[:, :, None, None]
        out[key] = tensor
    return out


def _open_clip(state: dict, prefix: str) -> dict:
    """Hugging Face CLIP names -> OpenCLIP's, with q/k/v fused into ``in_proj``."""
    import torch

    out = {
        f"{prefix}token_embedding.weight": state.pop("text_model.embeddings.token_embedding.weight"),
        f"{prefix}positional_embedding": state.pop("text_model.embeddings.position_embedding.weight"),
        f"{prefix}ln_final.weight": state.pop("text_model.final_layer_norm.weight"),
        f"{prefix}ln_final.bias": state.pop("text_model.final_layer_norm.bias"),
    }
    if "text_projection.weight" in state:
        out[f"{prefix}text_projection"] = state.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for layer in layers:
        source = f"text_model.encoder.layers.{layer}."
        target = f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{source}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
        for key in [k for k in state if k.startswith(source)]:
            out[target + _rename_start(key[len(source):], _OPEN_CLIP_NAMES)] = state.pop(key)
    if state:
        raise ValueError(f"no OpenCLIP name for {sorted(state)[:3]}")
    return out
