"""Text (and optionally an image) -> image, from a build's manifest and files alone.

Mirrors what Core ML Stable Diffusion apps do with these models: tokenize, encode the prompt and
the negative prompt, denoise with classifier-free guidance using a diffusers scheduler built from
the manifest's scheduler config, decode the latents (divided by the latent scaling factor).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sdbuild.contract import CONTROL_UNET, REFINER, TEXT_ENCODER_2, UNET
from sdbuild.errors import SdbuildError
from sdbuild.manifest import ComponentInfo, Manifest, check_build
from sdbuild.progress import bar
from sdbuild.runner.backends import ChunkedPredictor, Predictor, load_predictor, resolve_backend
from sdbuild.runner.inpaint import Inpainting
from sdbuild.runner.control import Control, prepare_control
from sdbuild.sources.embeddings import expand_multi_vector_tokens
from sdbuild.sources.resolved import TOKENIZER_OF
from sdbuild.sources.tokenizer import VOCAB_FILE

SCHEDULERS = {
    "DDIM": "DDIMScheduler",
    "DPMSolverMultistep": "DPMSolverMultistepScheduler",
    "EulerDiscrete": "EulerDiscreteScheduler",
    "EulerAncestralDiscrete": "EulerAncestralDiscreteScheduler",
    "LMSDiscrete": "LMSDiscreteScheduler",
    "PNDM": "PNDMScheduler",
}
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


@dataclass
class GenerationSettings:
    prompt: str
    negative_prompt: str = ""
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 93
    scheduler: str = "DPMSolverMultistep"
    init_image: str | None = None
    mask: str | None = None  # inpainting: white = repaint, black = keep (needs init_image)
    strength: float = 0.75
    backend: str = "auto"
    control_images: tuple[str, ...] = ()  # one per ControlNet of the build, in the recipe's order
    control_scales: tuple[float, ...] = (1.0,)  # one for all ControlNets, or one each
    # The SDXL refiner's conditioning (as diffusers' defaults), and the hand-off from a base build.
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5
    refiner: str | None = None
    refine_from: float = 0.8


class Pipeline:
    def __init__(self, build_dir: Path, backend: str = "auto", progress=None):
        # Schema and every file's hash are checked before anything is loaded, and only the
        # paths that were hashed are loaded.
        self._build = check_build(build_dir).intact()
        self.manifest = self._build.manifest
        self.backend = resolve_backend(backend)
        self._progress = progress or (lambda text: print(text, file=sys.stderr, flush=True))
        self._models: dict[str, Predictor] = {}
        from transformers import CLIPTokenizer

        # from_pretrained reads vocab.json + merges.txt from a folder (the constructor's
        # vocab_file/merges_file arguments are ignored by transformers 5); the check above refused
        # any other file there. SDXL's second text encoder has its own folder only when its
        # tokenizer differs.
        paths = self._build.paths
        if VOCAB_FILE not in paths:
            raise SdbuildError(f"the manifest of {build_dir} lists no tokenizer {VOCAB_FILE}", "rebuild the recipe")
        self.tokenizer = CLIPTokenizer.from_pretrained(str(paths[VOCAB_FILE].parent))
        second = paths.get(f"{TOKENIZER_OF[TEXT_ENCODER_2]}/{VOCAB_FILE}")
        self.tokenizer_2 = CLIPTokenizer.from_pretrained(str(second.parent)) if second else self.tokenizer
        # An SDXL refiner build: text_encoder_2 alone, its UNet is the component `refiner`.
        self.is_refiner = self.has(REFINER)
        self.unet_component = REFINER if self.is_refiner else UNET

    def has(self, component: str) -> bool:
        return component in self.manifest.components

    def model(self, component: str) -> Predictor:
        if component not in self._models:
            if not self.has(component):
                raise SdbuildError(f"this build has no {component}", "rebuild with it listed in components")
            info = self.manifest.components[component]
            self._progress(f"loading {component} ({self.backend})")
            self._models[component] = self._load(info)
        return self._models[component]

    def _load(self, info: ComponentInfo) -> Predictor:
        units = self.manifest.compute_units
        paths = self._build.paths
        if info.chunks:  # chunks are preferred when both exist, as in the Swift package
            return ChunkedPredictor([
                (load_predictor(self.backend, paths[c.file], units), [t.name for t in c.interface.inputs])
                for c in info.chunks
            ])
        return load_predictor(self.backend, paths[info.file], units)

    # --- conditioning ---------------------------------------------------------------------

    def token_ids(self, text: str, tokenizer=None) -> np.ndarray:
        """(1, 77) float32 ids, padded and truncated as the text encoders were traced."""
        tokenizer = tokenizer or self.tokenizer
        text = expand_multi_vector_tokens(text, tokenizer)  # textual-inversion tokens of several vectors
        ids = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
        return np.asarray(ids, dtype=np.float32)[None, :]

    def encode_text(self, text: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(hidden states (1, D, 1, 77) for the UNet, pooled embedding for SDXL or None)."""
        ids = self.token_ids(text)
        if self.manifest.source.family != "sdxl":
            hidden = self.model("text_encoder").predict({"input_ids": ids})["last_hidden_state"]
            return _unet_layout(hidden), None
        second = self.model("text_encoder_2").predict({"input_ids": self.token_ids(text, self.tokenizer_2)})
        hidden = second["hidden_embeds"]
        if not self.is_refiner:
            first = self.model("text_encoder").predict({"input_ids": ids})
            hidden = np.concatenate([first["hidden_embeds"], hidden], axis=-1)
        return _unet_layout(hidden), second["pooled_outputs"]

    # --- generation -----------------------------------------------------------------------

    def generate(self, settings: GenerationSettings) -> np.ndarray:
        """An (H, W, 3) uint8 image."""
        # Both check the request against the build before any model loads.
        inpainting = Inpainting.for_request(self.manifest, settings)
        control = prepare_control(self.manifest, settings.control_images, settings.control_scales)
        scheduler, latents, timesteps, generator = self.start(settings, inpainting)
        latents = self.denoise(settings, scheduler, latents, timesteps, generator, inpainting, control)
        return self.finish(latents)

    def start(self, settings: GenerationSettings, inpainting: Inpainting | None = None):
        """(scheduler, initial latents, the timesteps to run, the seeded generator)."""
        import torch

        scheduler = make_scheduler(settings.scheduler, self.manifest.source.scheduler)
        scheduler.set_timesteps(settings.steps)
        generator = torch.Generator().manual_seed(settings.seed)
        if inpainting:  # it draws its noise itself, in diffusers' order
            latents, timesteps = inpainting.start(self, settings, scheduler, generator)
        elif settings.init_image:
            latents, timesteps = self._image_latents(settings, scheduler, generator)
        else:
            h, w = self.manifest.latent_size
            latents = torch.randn((1, 4, h, w), generator=generator) * scheduler.init_noise_sigma
            timesteps = scheduler.timesteps
        return scheduler, latents, timesteps, generator

    def finish(self, latents) -> np.ndarray:
        return self._safety_filter(self.decode(latents.numpy()))

    def denoise(self, settings: GenerationSettings, scheduler, latents, timesteps, generator,
                inpainting: Inpainting | None = None, control: Control | None = None):
        """``latents`` denoised over ``timesteps`` (a part of ``scheduler``'s) with this build's
        text encoders and UNet (fed the mask and masked picture when inpainting, the ControlNets'
        residuals when controlled)."""
        import torch

        cond, cond_pooled = self.encode_text(settings.prompt)
        uncond, uncond_pooled = self.encode_text(settings.negative_prompt)
        extra = self._extra_unet_inputs(settings, cond_pooled, uncond_pooled)
        # Ancestral samplers draw noise each step; seed it too where the scheduler accepts it.
        step_options = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        for index, t in enumerate(bar(timesteps, "denoising"), start=1):
            model_input = scheduler.scale_model_input(latents, t)
            if inpainting:
                model_input = inpainting.unet_sample(model_input)
            noise_uncond, noise_cond = self._predict_noise(model_input.numpy(), float(t), uncond, cond, extra, control)
            guided = noise_uncond + settings.guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(torch.from_numpy(guided), t, latents, **step_options).prev_sample
            self._progress(f"step {index}/{len(timesteps)}")
        return latents

    def _predict_noise(self, latents, t, uncond, cond, extra, control: Control | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        unet = self.model(CONTROL_UNET if control else self.unet_component)

        def predict(feed: dict[str, np.ndarray]) -> np.ndarray:
            residuals = control.residuals(self.model, feed) if control else {}
            return unet.predict({**feed, **residuals})["noise_pred"]

        if self.manifest.batch_size == 2:
            feed = {
                "sample": np.concatenate([latents, latents]),
                "timestep": np.array([t, t], dtype=np.float32),
                "encoder_hidden_states": np.concatenate([uncond, cond]),
                **{k: np.concatenate(v) for k, v in extra.items()},
            }
            noise = predict(feed)
            return noise[:1], noise[1:]
        results = []
        for index, hidden in enumerate((uncond, cond)):
            feed = {"sample": latents, "timestep": np.array([t], dtype=np.float32),
                    "encoder_hidden_states": hidden, **{k: v[index] for k, v in extra.items()}}
            results.append(predict(feed))
        return results[0], results[1]

    def _extra_unet_inputs(self, settings, cond_pooled, uncond_pooled) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """SDXL's added conditioning: pooled text embeddings and (original, crop, target) sizes;
        the refiner has an aesthetic score in place of the target size."""
        if self.manifest.source.family != "sdxl":
            return {}
        height, width = (8 * s for s in self.manifest.latent_size)
        if self.is_refiner:
            time_ids = tuple(np.array([[height, width, 0, 0, score]], dtype=np.float32)
                             for score in (settings.negative_aesthetic_score, settings.aesthetic_score))
        else:
            time_ids = (np.array([[height, width, 0, 0, height, width]], dtype=np.float32),) * 2
        return {"text_embeds": (uncond_pooled, cond_pooled), "time_ids": time_ids}

    def _image_latents(self, settings, scheduler, generator):
        if not self.has("vae_encoder"):
            raise SdbuildError("image-to-image needs a vae_encoder in the build", "rebuild with vae_encoder in components")
        import torch

        timesteps = strength_timesteps(scheduler, settings)
        latents = self.encode_image(self.image_pixels(settings.init_image), generator)
        noise = torch.randn(latents.shape, generator=generator)  # drawn after the sample, as diffusers does
        return scheduler.add_noise(latents, noise, timesteps[:1]), timesteps

    def image_pixels(self, path: str) -> np.ndarray:
        """(1, 3, H, W) in [-1, 1], resized to the build's image size."""
        from PIL import Image

        h, w = self.manifest.latent_size
        image = Image.open(path).convert("RGB").resize((8 * w, 8 * h), Image.Resampling.LANCZOS)
        return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]

    def encode_image(self, pixels: np.ndarray, generator):
        """Scaled latents (a torch tensor) sampled from the vae_encoder's distribution of ``pixels``."""
        import torch

        moments = self.model("vae_encoder").predict({"x": pixels})["latent"]
        mean, logvar = np.split(moments, 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        sample = mean + std * torch.randn(mean.shape, generator=generator).numpy()
        return torch.from_numpy(sample * self.manifest.source.latent_scaling_factor)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        z = (latents / self.manifest.source.latent_scaling_factor).astype(np.float32)
        image = self.model("vae_decoder").predict({"z": z})["image"][0]
        return (np.clip((image.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0) * 255).round().astype(np.uint8)

    def _safety_filter(self, image: np.ndarray) -> np.ndarray:
        if not self.has("safety_checker"):
            return image
        from PIL import Image

        resized = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32) / 255
        clip_input = ((resized - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)[None]
        result = self.model("safety_checker").predict({
            "clip_input": clip_input,
            "images": (image.astype(np.float32) / 255)[None],
            "adjustment": np.zeros((1,), dtype=np.float32),
        })
        if result["has_nsfw_concepts"].any():
            self._progress("the safety checker flagged this image; it was replaced")
        return (np.clip(result["filtered_images"][0], 0, 1) * 255).round().astype(np.uint8)


def strength_timesteps(scheduler, settings: GenerationSettings):
    """The last ``strength`` share of the schedule: where a generation from a picture starts."""
    if not 0.0 < settings.strength <= 1.0:
        raise SdbuildError(f"strength={settings.strength} is outside (0, 1]", "e.g. --strength 0.75")
    keep = min(int(settings.steps * settings.strength), settings.steps)
    timesteps = scheduler.timesteps[settings.steps - keep:]
    if len(timesteps) == 0:
        raise SdbuildError(f"strength={settings.strength} leaves no denoising steps", "raise --strength or --steps")
    return timesteps


def make_scheduler(name: str, config: dict):
    if name not in SCHEDULERS:
        raise SdbuildError(f"unknown scheduler '{name}'", f"choose one of: {', '.join(SCHEDULERS)}")
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def _unet_layout(hidden: np.ndarray) -> np.ndarray:
    """(1, S, D) text hidden states -> the UNet's (1, D, 1, S) Neural Engine layout."""
    return hidden.transpose(0, 2, 1)[:, :, None, :].astype(np.float32)


def settings_record(settings: GenerationSettings, manifest: Manifest, backend: str) -> dict:
    return {**asdict(settings), "backend": backend, "build_id": manifest.build_id,
            "recipe": manifest.recipe.name, "model_id": manifest.source.model_id}
