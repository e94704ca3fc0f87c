"""The interface contract of Core ML Stable Diffusion apps, as data.

Every component's input and output names, shapes and dtypes come from here and nowhere else: the
converter declares them, the verifier feeds them, the manifest records them and the runner reads
them back. Facts follow Apple's ml-stable-diffusion reference (see README, "The contract").
"""

from __future__ import annotations

from dataclasses import dataclass

from sdbuild.errors import SdbuildError

TEXT_SEQUENCE_LENGTH = 77

# Component names as the reference spells them in package file names.
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
UNET = "unet"
REFINER = "refiner"  # the SDXL refiner's UNet
CONTROL_UNET = "control-unet"
CONTROLNET = "controlnet"
VAE_DECODER = "vae_decoder"
VAE_ENCODER = "vae_encoder"
SAFETY_CHECKER = "safety_checker"
ALL_COMPONENTS = (
    TEXT_ENCODER, TEXT_ENCODER_2, UNET, REFINER, CONTROL_UNET, CONTROLNET, VAE_DECODER, VAE_ENCODER,
    SAFETY_CHECKER,
)

# Names of the compiled models in a Swift `Resources/` folder.
RESOURCE_NAMES = {
    TEXT_ENCODER: "TextEncoder",
    TEXT_ENCODER_2: "TextEncoder2",
    UNET: "Unet",
    REFINER: "UnetRefiner",
    CONTROL_UNET: "ControlledUnet",
    VAE_DECODER: "VAEDecoder",
    VAE_ENCODER: "VAEEncoder",
    SAFETY_CHECKER: "SafetyChecker",
}

# The source submodel folder whose weights each component is built from.
SUBMODEL_OF = {
    TEXT_ENCODER: "text_encoder",
    TEXT_ENCODER_2: "text_encoder_2",
    UNET: "unet",
    REFINER: "unet",
    CONTROL_UNET: "unet",
    CONTROLNET: "unet",  # a ControlNet must fit the UNet (its weights come from the recipe's controlnet:)
    VAE_DECODER: "vae",
    VAE_ENCODER: "vae",
    SAFETY_CHECKER: "safety_checker",
}


def submodel_folders(component: str) -> tuple[str, ...]:
    """Every source folder ``component`` is built from: a ControlNet only from its own weights."""
    if component == CONTROLNET:
        return ("controlnet",)
    return (SUBMODEL_OF[component],)


def controlnet_key(model_id: str) -> str:
    """The manifest's key of the ControlNet ``model_id``: a build holds one package per ControlNet."""
    return f"{CONTROLNET}/{model_id}"


def component_of(key: str) -> str:
    """The contract component of a manifest key (``controlnet/<id>`` is a ``controlnet``)."""
    return CONTROLNET if key.startswith(f"{CONTROLNET}/") else key


# Components built from a (base) UNet's weights.
UNET_COMPONENTS = (UNET, CONTROL_UNET, CONTROLNET)

VERSION_METADATA_KEY = "com.github.apple.ml-stable-diffusion.version"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "float16" or "float32"

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ArchInfo:
    """What the contract needs to know about an architecture, read from its configs."""

    name: str
    family: str  # "sd1", "sd2" or "sdxl"
    components: tuple[str, ...]  # the source's submodel folders (unet, vae, text_encoder, ...)
    cross_attention_dim: int
    text_hidden_sizes: tuple[int, ...]  # per text encoder
    text_pooled_size: int  # pooled_outputs of the last text encoder (SDXL: projected)
    latent_channels: int
    # The UNet's `sample` channels: the latents, or for an inpainting UNet latents + mask +
    # masked-image latents (see `inpainting_channels`).
    unet_in_channels: int
    default_latent_size: int
    vae_scaling_factor: float
    prediction_type: str
    control_residual_layout: tuple[tuple[int, int], ...]  # (channels, downscale) per residual
    # The SDXL refiner: text_encoder_2 alone, and an aesthetic score in place of the target size
    # among its time ids. Its UNet is the component `refiner`, never `unet`.
    refiner: bool = False

    @property
    def is_xl(self) -> bool:
        return self.family == "sdxl"

    @property
    def is_inpainting(self) -> bool:
        return self.unet_in_channels == inpainting_channels(self.latent_channels)

    @property
    def time_id_count(self) -> int:
        """SDXL base: original size, crop top-left, target size; the refiner: original size,
        crop top-left, aesthetic score."""
        return 5 if self.refiner else 6

    def supports(self, component: str) -> bool:
        if component in UNET_COMPONENTS and self.refiner:
            return False
        if component == REFINER and not self.refiner:
            return False
        return SUBMODEL_OF[component] in self.components

    @classmethod
    def from_configs(cls, name: str, configs: dict[str, dict]) -> ArchInfo:
        """``configs`` maps a submodel folder name to its config.json content."""
        unet, vae = configs["unet"], configs["vae"]
        text_encoders = [configs[k] for k in ("text_encoder", "text_encoder_2") if k in configs]
        if unet.get("addition_embed_type") == "text_time":
            family = "sdxl"
        elif unet.get("use_linear_projection"):
            # SD 2.x projects in and out of its transformers with linear layers, SD 1.x with
            # 1x1 convolutions; unlike the text width, this also holds for the tiny test configs.
            family = "sd2"
        else:
            family = "sd1"
        last_text = text_encoders[-1]
        pooled = last_text["projection_dim"] if family == "sdxl" else last_text["hidden_size"]
        refiner = family == "sdxl" and _sdxl_time_id_count(unet, pooled) == 5
        if refiner and "text_encoder" in configs:
            raise ValueError("an SDXL refiner UNet (5 time ids) conditions on text_encoder_2 alone, "
                             "but the model also has a text_encoder")
        return cls(
            name=name,
            family=family,
            components=tuple(sorted(configs)),
            cross_attention_dim=int(unet["cross_attention_dim"]),
            text_hidden_sizes=tuple(int(t["hidden_size"]) for t in text_encoders),
            text_pooled_size=int(pooled),
            latent_channels=int(vae.get("latent_channels", 4)),
            unet_in_channels=int(unet.get("in_channels", 4)),
            default_latent_size=int(unet["sample_size"]),
            vae_scaling_factor=float(vae.get("scaling_factor", 0.18215)),
            prediction_type=configs.get("scheduler", {}).get("prediction_type", "epsilon"),
            control_residual_layout=_control_residual_layout(unet),
            refiner=refiner,
        )


def inpainting_channels(latent_channels: int) -> int:
    """An inpainting UNet's `sample`: latents, a one-channel mask, the masked image's latents,
    concatenated in that order (diffusers' StableDiffusionInpaintPipeline)."""
    return 2 * latent_channels + 1


def _sdxl_time_id_count(unet: dict, pooled: int) -> int:
    """The added embedding takes the pooled text embedding and each time id's sinusoidal
    embedding: 6 time ids for SDXL base, 5 for the refiner."""
    width = unet["addition_time_embed_dim"]
    count, rest = divmod(unet["projection_class_embeddings_input_dim"] - pooled, width)
    if rest or count not in (5, 6):
        raise ValueError(f"unet projection_class_embeddings_input_dim={unet['projection_class_embeddings_input_dim']} "
                         f"is not the pooled text width {pooled} plus 5 or 6 time ids of {width}")
    return count


def _control_residual_layout(unet: dict) -> tuple[tuple[int, int], ...]:
    """conv_in, then every resnet of each down block and its downsampler, then the mid block."""
    channels = unet["block_out_channels"]
    layers = unet["layers_per_block"]
    layout = [(channels[0], 1)]
    for index, width in enumerate(channels):
        count = layers if isinstance(layers, int) else layers[index]
        layout += [(width, 2**index)] * count
        if index < len(channels) - 1:
            layout.append((width, 2 ** (index + 1)))
    layout.append((channels[-1], 2 ** (len(channels) - 1)))
    return tuple(layout)


@dataclass(frozen=True)
class Interface:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def as_dict(self) -> dict:
        return {
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
        }


def vae_precision(arch: ArchInfo) -> str:
    """The SDXL VAE overflows in float16 on device, so the reference keeps it in float32."""
    return "float32" if arch.is_xl else "float16"


def component_interface(
    component: str, arch: ArchInfo, latent_size: tuple[int, int], batch_size: int,
    vae_dtype: str | None = None,
) -> Interface:
    """Inputs and outputs of ``component`` exactly as Core ML Stable Diffusion apps expect;
    ``vae_dtype`` overrides ``vae_precision(arch)`` (a recipe's float16-safe SDXL VAE)."""
    if not arch.supports(component):
        raise SdbuildError(f"architecture '{arch.name}' has no component '{component}'")
    h, w = latent_size
    c = arch.latent_channels
    seq = TEXT_SEQUENCE_LENGTH
    f16, f32 = "float16", "float32"

    if component in (TEXT_ENCODER, TEXT_ENCODER_2):
        # The refiner has text_encoder_2 alone; SDXL base's text_encoder_2 is its last.
        hidden = arch.text_hidden_sizes[0 if component == TEXT_ENCODER else -1]
        if arch.is_xl:
            pooled = arch.text_pooled_size if component == TEXT_ENCODER_2 else hidden
            outputs = (TensorSpec("hidden_embeds", (1, seq, hidden), f32),
                       TensorSpec("pooled_outputs", (1, pooled), f32))
        else:
            outputs = (TensorSpec("last_hidden_state", (1, seq, hidden), f32),
                       TensorSpec("pooled_outputs", (1, hidden), f32))
        return Interface((TensorSpec("input_ids", (1, seq), f32),), outputs)

    if component in (*UNET_COMPONENTS, REFINER):
        b = batch_size
        inputs = [
            # A ControlNet sees the latents alone; an inpainting UNet also the mask and image.
            TensorSpec("sample", (b, c if component == CONTROLNET else arch.unet_in_channels, h, w), f16),
            TensorSpec("timestep", (b,), f16),
            TensorSpec("encoder_hidden_states", (b, arch.cross_attention_dim, 1, seq), f16),
        ]
        if arch.is_xl:
            inputs += [TensorSpec("time_ids", (b, arch.time_id_count), f16),
                       TensorSpec("text_embeds", (b, arch.text_pooled_size), f16)]
        residuals = control_residual_specs(arch, latent_size, batch_size)
        if component == CONTROLNET:
            inputs.append(TensorSpec("controlnet_cond", (b, 3, 8 * h, 8 * w), f16))
            return Interface(tuple(inputs), tuple(TensorSpec(r.name, r.shape, f32) for r in residuals))
        if component == CONTROL_UNET:
            inputs += residuals
        return Interface(tuple(inputs), (TensorSpec("noise_pred", (b, c, h, w), f32),))

    vae_dtype = vae_dtype or vae_precision(arch)
    if component == VAE_DECODER:
        return Interface((TensorSpec("z", (1, c, h, w), vae_dtype),),
                         (TensorSpec("image", (1, 3, 8 * h, 8 * w), f32),))
    if component == VAE_ENCODER:
        return Interface((TensorSpec("x", (1, 3, 8 * h, 8 * w), vae_dtype),),
                         (TensorSpec("latent", (1, 2 * c, h, w), f32),))
    if component == SAFETY_CHECKER:
        size = 8 * h, 8 * w
        return Interface(
            (TensorSpec("clip_input", (1, 3, 224, 224), f16),
             TensorSpec("images", (1, size[0], size[1], 3), f16),
             TensorSpec("adjustment", (1,), f16)),
            (TensorSpec("filtered_images", (1, size[0], size[1], 3), f32),
             # The reference keeps the image-broadcast shape; apps read element [0].
             TensorSpec("has_nsfw_concepts", (1, 1, 1, 1), f32),
             TensorSpec("concept_scores", (1, 17), f32)),
        )
    raise SdbuildError(f"unknown component '{component}'", f"choose from {', '.join(ALL_COMPONENTS)}")


def control_residual_specs(
    arch: ArchInfo, latent_size: tuple[int, int], batch_size: int
) -> tuple[TensorSpec, ...]:
    """``additional_residual_{i}``: one per ControlNet down-block output, then the mid block."""
    h, w = latent_size
    return tuple(
        TensorSpec(f"additional_residual_{i}", (batch_size, ch, h // scale, w // scale), "float16")
        for i, (ch, scale) in enumerate(arch.control_residual_layout)
    )


def package_file_name(model_id: str, component: str, chunk: int | None = None) -> str:
    """``Stable_Diffusion_version_{model id with / as _}_{component}[_chunkN].mlpackage``, and
    ``ControlNet_{model id with / as _}.mlpackage`` for a ControlNet."""
    if component == CONTROLNET:
        return f"ControlNet_{model_id.replace('/', '_')}.mlpackage"
    suffix = f"_chunk{chunk}" if chunk is not None else ""
    return f"Stable_Diffusion_version_{model_id.replace('/', '_')}_{component}{suffix}.mlpackage"
