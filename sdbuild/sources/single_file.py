"""Single-file sources: one checkpoint in the original (LDM / SGM) layout, such as a fine-tune's
``model.safetensors``, mapped onto a bundled architecture's diffusers configs, offline.

Resolving converts the file once, with diffusers' single-file converters, into a diffusers
snapshot folder in sdbuild's cache (``<cache>/sources/file-<key>``, keyed by the file's sha256,
the architecture's configs and the tokenizer, and written atomically); from there it loads like
a local folder. The file carries no tokenizer: ``tiny-*`` architectures get the synthetic
vocabulary their weights are generated with, real ones need ``model.tokenizer=<diffusers folder>``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sdbuild.archs import architecture_dir, list_architectures
from sdbuild.contract import ArchInfo, inpainting_channels
from sdbuild.errors import SdbuildError
from sdbuild.sources.digest import file_sha256, files_digest, json_digest
from sdbuild.sources.original_layout import FAMILY_NAMES, TEXT_ENCODER_LAYOUTS, UNET_PREFIX, detect_family
from sdbuild.sources.resolved import SCHEDULER_FOLDER, TOKENIZER_OF, ResolvedSource, arch_from_configs
from sdbuild.sources.snapshot import PICKLE_SUFFIXES, check_safetensors, read_snapshot
from sdbuild.sources.synthetic import synthetic_configs

# Bump when the conversion changes: it names the converted folders.
SINGLE_FILE_SCHEME_VERSION = 1
SAFETENSORS_SUFFIX = ".safetensors"
SNAPSHOTS_FOLDER = "sources"
WEIGHT_NAMES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors"}
TEXT_ENCODER_WEIGHTS = "model.safetensors"


def resolve_single_file(model_cfg, cache_dir: Path) -> ResolvedSource:
    """Check the file and the architecture, convert on first use, resolve the converted folder."""
    path, architecture = model_cfg.path, model_cfg.architecture
    file = checked_file(path, model_cfg.allow_pickle)
    # A single file holds the pipeline's own submodels, never a safety checker.
    configs = {f: c for f, c in synthetic_configs(architecture).items() if f != "safety_checker"}
    arch = arch_from_configs(architecture, configs, f"bundled architecture '{architecture}'")
    if arch.refiner:
        raise SdbuildError(
            f"model.architecture={architecture}: single-file SDXL refiner checkpoints are not supported yet",
            "build the refiner from its diffusers folder (model.source=local model.path=<folder>) or the Hub")
    tokenizer_dirs = _tokenizer_dirs(model_cfg.tokenizer, architecture, configs)
    with open_checkpoint(file) as checkpoint:
        _check_family(file, checkpoint, arch.family, architecture)
        _check_unet_inputs(file, checkpoint, arch)
        file_digest = file_sha256(file)
        key = json_digest({
            "file": file_digest, "architecture": architecture, "configs": configs,
            "tokenizer": {
                t: files_digest(d, [f for f in d.iterdir() if f.is_file()]) for t, d in tokenizer_dirs.items()
            },
            "scheme": SINGLE_FILE_SCHEME_VERSION,
        })
        folder = Path(cache_dir).expanduser() / SNAPSHOTS_FOLDER / f"file-{key}"
        if not folder.is_dir():
            _write_snapshot(folder, file, checkpoint, arch.family, architecture, configs, tokenizer_dirs)
    snapshot_configs, digest = read_snapshot(folder, allow_pickle=False)
    return ResolvedSource(
        kind="file", model_id=model_cfg.id or f"file/{file.stem}", revision=file_digest,
        digest=digest, arch=arch, configs=snapshot_configs, root=folder,
    )


def checked_file(path: str | None, allow_pickle: bool, key: str = "model", kind: str = "checkpoint",
                 pickle_key: str | None = None) -> Path:
    """The existing ``kind`` file at ``path`` (recipe key ``<key>.path``), its safetensors header
    checked; pickle files only when ``pickle_key`` (default ``<key>.allow_pickle``) allows them."""
    pickle_key = pickle_key or f"{key}.allow_pickle"
    if not path:
        raise SdbuildError(f"{key}.source=file needs {key}.path", f"set {key}.path=<{kind}>.safetensors")
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise SdbuildError(f"{kind} file '{path}' does not exist", f"set {key}.path to a {kind} file")
    if file.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise SdbuildError(
                f"'{file}' is a pickle {kind}",
                f"pickle files can execute code when loaded: set {pickle_key}=true only if you "
                "trust this file, or convert it to .safetensors",
            )
    elif file.suffix == SAFETENSORS_SUFFIX:
        check_safetensors(file)
    else:
        raise SdbuildError(
            f"'{file}' is not a {kind} file (unknown extension '{file.suffix}')",
            f"use a {SAFETENSORS_SUFFIX} file (or {', '.join(PICKLE_SUFFIXES)} with {pickle_key}=true)",
        )
    return file


class _LazyTensors(Mapping):
    """A safetensors file as a read-only mapping that reads a tensor only when it is asked for,
    so converting one submodel holds only that submodel's tensors."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self._keys = set(handle.keys())

    def __getitem__(self, key: str):
        if key not in self._keys:
            raise KeyError(key)
        return self._handle.get_tensor(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)


@contextmanager
def open_checkpoint(file: Path) -> Iterator[Mapping]:
    import torch
    from safetensors import SafetensorError, safe_open

    hint = "re-download the checkpoint, or re-save it as .safetensors"
    if file.suffix == SAFETENSORS_SUFFIX:
        try:
            with safe_open(str(file), framework="pt") as handle:
                yield _LazyTensors(handle)
        except SafetensorError as error:
            raise SdbuildError(f"'{file}' is not a readable safetensors file ({error})", hint) from error
        return
    try:
        checkpoint = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # pickle, zip and torch raise many types: all mean unreadable
        raise SdbuildError(f"'{file}' is not a readable checkpoint ({type(error).__name__}: {error})", hint) from error
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]  # Lightning training checkpoints nest the weights
    yield {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def _check_family(file: Path, checkpoint: Mapping, family: str, architecture: str) -> None:
    """The file's text encoder layout must be the architecture's; both are named otherwise."""
    keys = list(checkpoint)
    missing = [p for p in ("model.diffusion_model.", "first_stage_model.") if not any(k.startswith(p) for k in keys)]
    detected = detect_family(keys)
    if missing or detected is None:
        what = f"no {missing[0]}* tensors" if missing else "no known text encoder layout"
        raise SdbuildError(
            f"'{file}' is not a Stable Diffusion single-file checkpoint ({what})",
            "model.source=file takes a whole-pipeline checkpoint in the original layout; "
            "use model.source=local for a diffusers folder",
        )
    if detected != family:
        fitting = [a for a in list_architectures() if _family_of(a) == detected]
        raise SdbuildError(
            f"'{file}' is an {FAMILY_NAMES[detected]} checkpoint but model.architecture={architecture} "
            f"is {FAMILY_NAMES[family]}",
            f"set model.architecture to one of: {', '.join(fitting)}" if fitting
            else f"{FAMILY_NAMES[detected]} checkpoints are not supported yet",
        )


def _check_unet_inputs(file: Path, checkpoint: Mapping, arch: ArchInfo) -> None:
    """An inpainting file (9-channel UNet) needs an inpainting architecture, and the reverse."""
    conv_in = checkpoint.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or conv_in.shape[1] == arch.unet_in_channels:
        return  # a file without it is refused, naming the tensor, when its UNet is converted

    def kind(channels: int) -> str:
        task = "inpainting" if channels == inpainting_channels(arch.latent_channels) else "text-to-image"
        return f"{task} ({channels} UNet input channels)"

    fitting = [a for a in list_architectures()
               if _arch_of(a).family == arch.family and _arch_of(a).unet_in_channels == conv_in.shape[1]]
    raise SdbuildError(
        f"'{file}' is an {FAMILY_NAMES[arch.family]} {kind(conv_in.shape[1])} checkpoint but "
        f"model.architecture={arch.name} is {kind(arch.unet_in_channels)}",
        f"set model.architecture to one of: {', '.join(fitting)}" if fitting
        else f"{kind(conv_in.shape[1])} checkpoints are not supported",
    )


def _arch_of(architecture: str) -> ArchInfo:
    return arch_from_configs(architecture, synthetic_configs(architecture), architecture)


def _family_of(architecture: str) -> str:
    arch = _arch_of(architecture)
    return "sdxl-refiner" if arch.refiner else arch.family


def _tokenizer_dirs(tokenizer: str | None, architecture: str, configs: dict) -> dict[str, Path]:
    """Tokenizer folder name -> folder to copy; empty for the synthetic vocabulary."""
    if tokenizer is None:
        if architecture.startswith("tiny-"):
            return {}
        raise SdbuildError(
            f"a single-file checkpoint carries no tokenizer, and architecture '{architecture}' needs the real one",
            "set model.tokenizer=<a diffusers folder of the same model family> (its tokenizer/ is copied)",
        )
    root = Path(tokenizer).expanduser().resolve()
    dirs = {t: root / t for encoder, t in TOKENIZER_OF.items() if encoder in configs}
    for folder, path in dirs.items():
        if not all((path / name).is_file() for name in ("vocab.json", "merges.txt")):
            raise SdbuildError(
                f"'{path}' has no vocab.json and merges.txt",
                f"set model.tokenizer to a diffusers folder holding {', '.join(dirs)}/",
            )
    return dirs


def _write_snapshot(folder: Path, file: Path, checkpoint: Mapping, family: str, architecture: str,
                    configs: dict[str, dict], tokenizer_dirs: dict[str, Path]) -> None:
    """Convert every submodel into a staging folder beside ``folder``, then rename it into place."""
    from sdbuild.sources.synthetic_snapshot import write_pipeline_files
    from sdbuild.sources.tokenizer import write_tokenizer_folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        weighted = [f for f in configs if f != SCHEDULER_FOLDER]
        for submodel in weighted:
            _convert_submodel(staging / submodel, file, checkpoint, family, architecture, submodel)
        write_pipeline_files(staging, configs, weighted)
        for encoder, tokenizer in TOKENIZER_OF.items():
            if encoder in configs and tokenizer in tokenizer_dirs:
                shutil.copytree(tokenizer_dirs[tokenizer], staging / tokenizer)
            elif encoder in configs:
                write_tokenizer_folder(staging / tokenizer)
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():  # else another process converted the same file meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert_submodel(dest: Path, file: Path, checkpoint: Mapping, family: str, architecture: str,
                      submodel: str) -> None:
    """One submodel's tensors converted by diffusers, checked against the architecture, saved."""
    import torch
    from diffusers.loaders import single_file_utils as convert
    from safetensors.torch import save_file

    from sdbuild.sources.models import build_from_config, model_class, quiet_loading

    config_path = architecture_dir(architecture) / submodel / "config.json"
    config = json.loads(config_path.read_text())
    with quiet_loading(), torch.device("meta"):
        expected = build_from_config(model_class(submodel, config), config)
    if submodel == "unet":
        state = convert.convert_ldm_unet_checkpoint(checkpoint, config)
    elif submodel == "vae":
        state = convert.convert_ldm_vae_checkpoint(checkpoint, config)
    else:
        prefix, open_clip = TEXT_ENCODER_LAYOUTS[family][submodel]
        if open_clip:
            state = convert.convert_open_clip_checkpoint(expected, checkpoint, prefix=prefix)
        else:
            state = convert.convert_ldm_clip_checkpoint(checkpoint)
        if not hasattr(expected, "text_model"):  # transformers' flattened CLIPTextModel
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
    shapes = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    # Real files also carry CLIP's position_ids buffer, which the models rebuild themselves.
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    problem = state_mismatch(state, shapes)
    if problem:
        raise SdbuildError(
            f"'{file}' does not fit architecture '{architecture}': its {submodel} {problem}",
            "set model.architecture to the architecture the checkpoint was made for",
        )
    dest.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, dest / WEIGHT_NAMES.get(submodel, TEXT_ENCODER_WEIGHTS),
              metadata={"format": "pt"})
    shutil.copyfile(config_path, dest / "config.json")


def state_mismatch(state: dict, shapes: dict[str, tuple]) -> str | None:
    """What keeps ``state`` from loading into a model whose tensor shapes are ``shapes``, or None."""
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    wrong = [k for k in sorted(set(state) & set(shapes)) if tuple(state[k].shape) != shapes[k]]
    if missing:
        return f"lacks {len(missing)} tensors (e.g. {missing[0]})"
    if unexpected:
        return f"has {len(unexpected)} unknown tensors (e.g. {unexpected[0]})"
    if wrong:
        return f"tensor {wrong[0]} has shape {list(state[wrong[0]].shape)}, expected {list(shapes[wrong[0]])}"
    return None
