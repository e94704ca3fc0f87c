"""Writing a synthetic model to disk, laid out exactly like a Hugging Face diffusers snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from sdbuild.contract import ArchInfo
from sdbuild.sources.models import is_transformers_class, model_class, quiet_loading
from sdbuild.sources.resolved import CONTROLNET_FOLDER, SCHEDULER_FOLDER, TOKENIZER_OF
from sdbuild.sources.snapshot import MODEL_INDEX, SCHEDULER_CONFIG
from sdbuild.sources.synthetic import resolve_synthetic, synthetic_folders
from sdbuild.sources.synthetic_weights import build_synthetic_submodel
from sdbuild.sources.tokenizer import write_tokenizer_folder

_CLIP_IMAGE_SIZE = 224  # the safety checker's feature extractor input
_PREPROCESSOR_CONFIG = "feature_extractor/preprocessor_config.json"


def write_synthetic_snapshot(architecture: str, seed: int, dest: Path) -> Path:
    """Write the synthetic (``architecture``, ``seed``) model to ``dest`` and return ``dest``.

    Layout: ``model_index.json``; ``<submodel>/config.json`` with
    ``diffusion_pytorch_model.safetensors`` (unet, vae) or ``model.safetensors`` (text encoders,
    safety checker); ``scheduler/scheduler_config.json``; ``tokenizer/`` (and ``tokenizer_2/``
    for SDXL) with vocab.json, merges.txt and tokenizer configs; ``feature_extractor/`` when
    there is a safety checker. Submodels are built and saved one at a time to bound memory.
    """
    source = resolve_synthetic(architecture, seed)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    folders = [f for f in synthetic_folders(source) if f != CONTROLNET_FOLDER]
    for folder in folders:
        model = build_synthetic_submodel(source, folder)
        with quiet_loading():
            model.save_pretrained(dest / folder)
        del model  # free before building the next submodel
    write_pipeline_files(dest, source.configs, folders)
    for encoder, tokenizer in TOKENIZER_OF.items():
        if encoder in folders:
            write_tokenizer_folder(dest / tokenizer)
    return dest


def write_pipeline_files(dest: Path, configs: dict[str, dict], folders: list[str]) -> None:
    """What a snapshot holds besides weights and tokenizers: model_index.json, the scheduler
    config and, with a safety checker, the feature extractor config."""
    (dest / SCHEDULER_CONFIG).parent.mkdir(exist_ok=True)
    (dest / SCHEDULER_CONFIG).write_text(json.dumps(configs[SCHEDULER_FOLDER], indent=2))
    if "safety_checker" in folders:
        (dest / _PREPROCESSOR_CONFIG).parent.mkdir(exist_ok=True)
        (dest / _PREPROCESSOR_CONFIG).write_text(json.dumps(_clip_preprocessor_config(), indent=2))
    index = _model_index(configs, folders)
    (dest / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))


def _clip_preprocessor_config() -> dict:
    """CLIP's image preprocessing, as the safety checker's feature extractor config."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": _CLIP_IMAGE_SIZE},
        "resample": int(PILImageResampling.BICUBIC),
        "do_center_crop": True, "crop_size": {"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD),
        "do_convert_rgb": True,
    }


def _model_index(configs: dict[str, dict], folders: list[str]) -> dict:
    """model_index.json of the matching diffusers pipeline (SD or SDXL, text-to-image or
    inpainting, or the SDXL refiner's image-to-image pipeline, which has text_encoder_2 alone)."""
    xl = "text_encoder_2" in folders
    refiner = xl and "text_encoder" not in folders
    task = "Inpaint" if ArchInfo.from_configs("", configs).is_inpainting else ""
    index: dict = {
        "_class_name": "StableDiffusionXLImg2ImgPipeline" if refiner
        else f"StableDiffusion{'XL' if xl else ''}{task}Pipeline",
        "_diffusers_version": diffusers.__version__,
    }
    for folder in folders:
        cls = model_class(folder, configs[folder])
        library = "transformers" if is_transformers_class(cls) else "diffusers"
        if folder == "safety_checker":
            library = "stable_diffusion"  # diffusers' pipeline-module spelling for this class
        index[folder] = [library, cls.__name__]
    index[SCHEDULER_FOLDER] = ["diffusers", configs[SCHEDULER_FOLDER]["_class_name"]]
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    none = [None, None]  # an optional pipeline component left out
    if refiner:  # as the published refiner's model_index.json
        index |= {"text_encoder": none, "tokenizer": none, "requires_aesthetics_score": True}
    if xl:
        index |= {
            "tokenizer_2": ["transformers", "CLIPTokenizer"], "feature_extractor": none, "image_encoder": none,
            "force_zeros_for_empty_prompt": not refiner,
        }
        return index
    has_checker = "safety_checker" in folders
    index.setdefault("safety_checker", none)
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"] if has_checker else none
    index["requires_safety_checker"] = has_checker
    return index
