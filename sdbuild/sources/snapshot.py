"""Reading a diffusers snapshot folder (a Hub cache snapshot or a local copy).

Checks the layout, reads the configs, picks each submodel's weight files under the pickle
policy and validates safetensors headers, so that a bad folder fails here with the file named
rather than deep inside a library loader.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.sources.digest import files_digest
from sdbuild.sources.resolved import REQUIRED_FOLDERS, SCHEDULER_FOLDER, TOKENIZER_OF, WEIGHTED_FOLDERS
from sdbuild.sources.tokenizer import TOKENIZER_FILES

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = f"{SCHEDULER_FOLDER}/scheduler_config.json"

# Weight file stems that diffusers / transformers from_pretrained load (optionally sharded as
# <stem>-00001-of-00002.<ext>). Variants such as *.fp16.safetensors are never picked.
SAFETENSORS_STEMS = ("diffusion_pytorch_model", "model")
PICKLE_STEMS = ("diffusion_pytorch_model", "pytorch_model")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
_SHARD = r"(-\d+-of-\d+)?"
_SAFETENSORS_NAME = re.compile(rf"({'|'.join(SAFETENSORS_STEMS)}){_SHARD}\.safetensors")
_PICKLE_NAME = re.compile(rf"({'|'.join(PICKLE_STEMS)}){_SHARD}\.bin")

_REFETCH_HINT = "re-download or re-export the model folder"


@dataclass(frozen=True)
class WeightFiles:
    files: tuple[Path, ...]
    safetensors: bool  # False: pickle (.bin) weights, allowed by model.allow_pickle=true


def weight_globs(allow_pickle: bool) -> list[str]:
    """Glob patterns (Hub allow_patterns) of exactly the weight files ``weight_files`` accepts."""
    kinds = [(stem, "safetensors") for stem in SAFETENSORS_STEMS]
    if allow_pickle:
        kinds += [(stem, "bin") for stem in PICKLE_STEMS]
    return [f"*/{stem}{shard}.{ext}" for stem, ext in kinds for shard in ("", "-*-of-*")]


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise SdbuildError(f"'{path}' is missing", _REFETCH_HINT) from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SdbuildError(f"'{path}' is not valid JSON ({error})", _REFETCH_HINT) from error
    if not isinstance(value, dict):
        raise SdbuildError(f"'{path}' is not a JSON object", _REFETCH_HINT)
    return value


def weight_files(folder_dir: Path, allow_pickle: bool) -> WeightFiles:
    """The files ``from_pretrained`` will load for one submodel folder, safetensors first."""
    names = sorted(p.name for p in folder_dir.iterdir() if p.is_file())
    safetensors = [folder_dir / n for n in names if _SAFETENSORS_NAME.fullmatch(n)]
    if safetensors:
        for path in safetensors:
            check_safetensors(path)
        return WeightFiles(tuple(safetensors), safetensors=True)
    pickles = [folder_dir / n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles and not allow_pickle:
        raise SdbuildError(
            f"'{pickles[0]}' is a pickle weights file and '{folder_dir}' has no safetensors weights",
            "pickle files can execute code when loaded: set model.allow_pickle=true only if you "
            "trust this model, or convert it to safetensors",
        )
    loadable = [folder_dir / n for n in names if _PICKLE_NAME.fullmatch(n)]
    if loadable:
        return WeightFiles(tuple(loadable), safetensors=False)
    expected = " or ".join(f"{stem}.safetensors" for stem in SAFETENSORS_STEMS)
    raise SdbuildError(
        f"'{folder_dir}' has no weights (expected {expected})",
        "if the model only publishes pickle (.bin) weights set model.allow_pickle=true; "
        "otherwise " + _REFETCH_HINT,
    )


def check_safetensors(path: Path) -> None:
    """Header-only integrity check: the header parses and the tensor data fills the file exactly."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{size} bytes is shorter than a safetensors header")
            header_size = int.from_bytes(prefix, "little")
            if header_size > size - 8:
                raise ValueError(f"header of {header_size} bytes does not fit in {size} bytes")
            header = json.loads(stream.read(header_size))
        data_end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SdbuildError(f"weights file '{path}' is corrupt ({error})", _REFETCH_HINT) from error
    if 8 + header_size + data_end != size:
        raise SdbuildError(
            f"weights file '{path}' is truncated or corrupt "
            f"({size} bytes, header says {8 + header_size + data_end})",
            _REFETCH_HINT,
        )


def _is_disabled(index: dict, folder: str) -> bool:
    """model_index.json marks a component a pipeline runs without as [null, null]."""
    entry = index.get(folder)
    return isinstance(entry, list) and all(part is None for part in entry)


def read_snapshot(root: Path, allow_pickle: bool) -> tuple[dict[str, dict], str]:
    """Configs by submodel folder (plus ``scheduler``) and the content digest of ``root``.

    The digest covers model_index.json, every submodel's JSON files and the weight files
    loading will read, the scheduler config and the tokenizer vocab/merges.
    """
    index_path = root / MODEL_INDEX
    if not index_path.is_file():
        raise SdbuildError(
            f"'{root}' is not a diffusers model folder: {MODEL_INDEX} is missing",
            "point at a folder laid out like a Hugging Face diffusers snapshot "
            "(model_index.json, unet/, vae/, text_encoder/, ...)",
        )
    index = read_json(index_path)
    missing = [f"{f}/config.json" for f in REQUIRED_FOLDERS if not (root / f / "config.json").is_file()]
    if missing:
        raise SdbuildError(
            f"'{root}' lacks {', '.join(missing)}",
            "a Stable Diffusion diffusers folder needs unet/ and vae/ with their config.json",
        )
    folders = [
        f for f in WEIGHTED_FOLDERS
        if (root / f / "config.json").is_file() and not _is_disabled(index, f)
    ]
    configs: dict[str, dict] = {}
    hashed: list[Path] = [index_path]
    for folder in folders:
        configs[folder] = read_json(root / folder / "config.json")
        hashed += sorted((root / folder).glob("*.json"))
        hashed += weight_files(root / folder, allow_pickle).files
    if (root / SCHEDULER_CONFIG).is_file():
        configs[SCHEDULER_FOLDER] = read_json(root / SCHEDULER_CONFIG)
        hashed.append(root / SCHEDULER_CONFIG)
    tokenizer_files = [root / t / name for t in TOKENIZER_OF.values() for name in TOKENIZER_FILES]
    hashed += [path for path in tokenizer_files if path.is_file()]
    return configs, files_digest(root, hashed)
