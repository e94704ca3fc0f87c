"""Another VAE for the decoder and encoder: the recipe's ``vae: {source, id|path, revision, seed,
precision}`` (``source: null`` keeps the model's own VAE).

Sources, as for models: ``hub`` (a VAE repo, its config.json and weights at the root or in
``vae/``), ``local`` (an AutoencoderKL folder, or a pipeline folder's ``vae/``), ``file`` (one
original-layout VAE ``.safetensors``, converted with diffusers' converter onto the model's own VAE
config) and ``synthetic`` (the model's VAE config with seeded weights of ``vae.seed``).

Resolving checks the VAE fits the model (latent channels, 8x downscale, 3 colour channels; a file's
tensor shapes from its header) and hashes what it reads; weights load when a VAE component is
converted. The manifest's ``source.latent_scaling_factor`` is that of the VAE the build ships (the
replacement's config ``scaling_factor``), as diffusers uses ``pipe.vae.config.scaling_factor``.

Precision: the contract keeps SDXL's VAE in float32 (it overflows in float16); a VAE whose config
says ``force_upcast: false`` (the fp16-fixed SDXL VAE) converts in float16, and ``vae.precision``
says it explicitly for either.

    sdbuild synth-vae --architecture tiny-sd15 --seed 1 --out vae-folder   (or --out vae.safetensors)
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from sdbuild.contract import vae_precision
from sdbuild.errors import SdbuildError
from sdbuild.sources.digest import file_sha256, files_digest, json_digest
from sdbuild.sources.resolved import ResolvedSource
from sdbuild.sources.snapshot import check_safetensors, read_json, weight_files
from sdbuild.sources.synthetic import SYNTHETIC_SCHEME_VERSION

if TYPE_CHECKING:
    import torch

    from sdbuild.config.schema import VaeConfig

VAE_FOLDER = "vae"
VAE_CLASS = "AutoencoderKL"
CONFIG_FILE = "config.json"
_SAFETENSORS = ".safetensors"
_HUB_PATTERNS = [f"{prefix}{name}" for prefix in ("", f"{VAE_FOLDER}/")
                 for name in (CONFIG_FILE, "diffusion_pytorch_model.safetensors")]
_DOWNSCALE = 8  # the contract's latent size is the image size / 8


@dataclass(frozen=True)
class VaeAddition:
    """The model's ``vae`` folder replaced by another VAE."""

    kind: ClassVar[str] = "vae"
    folders: ClassVar[tuple[str, ...]] = (VAE_FOLDER,)
    source: str  # hub | local | file | synthetic
    where: str  # for messages: the id, path or seed
    digest: str  # sha256 over what the weights come from (config and weight files, or config and seed)
    config: dict = field(hash=False)
    loader: Callable[[], "torch.nn.Module"] = field(hash=False, compare=False, repr=False)

    @property
    def scaling_factor(self) -> float:
        return float(self.config.get("scaling_factor", 0.18215))

    def identity(self) -> dict:
        return {"source": self.source, "digest": self.digest, "scaling_factor": self.scaling_factor}

    def apply(self, folder: str, load) -> "torch.nn.Module":
        from sdbuild.sources.load import _check_finite

        model = self.loader()
        _check_finite(model, f"the VAE {self.where}")
        return model.float().eval()


def resolve_vae(vae_cfg: "VaeConfig", source: ResolvedSource, allow_pickle: bool) -> VaeAddition | None:
    """The recipe's VAE, checked against ``source``'s architecture; None for the model's own."""
    kind = vae_cfg.source.value if vae_cfg.source is not None else None
    if kind is None:
        return None
    if kind in ("hub", "local") and not (vae_cfg.id if kind == "hub" else vae_cfg.path):
        key = "vae.id" if kind == "hub" else "vae.path"
        raise SdbuildError(f"vae.source={kind} needs {key}", f"set {key}=<{'org/name' if kind == 'hub' else 'folder'}>")
    if kind == "hub":
        from sdbuild.sources.hub import fetch_snapshot

        where = f"'{vae_cfg.id}'" + (f" at revision '{vae_cfg.revision}'" if vae_cfg.revision else "")
        root = fetch_snapshot(vae_cfg.id, vae_cfg.revision, f"VAE {where}", _HUB_PATTERNS)
        addition = _folder_vae("hub", where, root, allow_pickle)
    elif kind == "local":
        addition = _folder_vae("local", f"'{vae_cfg.path}'", Path(vae_cfg.path).expanduser().resolve(), allow_pickle)
    elif kind == "file":
        addition = _file_vae(vae_cfg.path, source)
    else:
        addition = _synthetic_vae(source, vae_cfg.seed)
    _check_fits(addition.config, source, addition.where)
    return addition


def resolved_vae_precision(vae_cfg: "VaeConfig", source: ResolvedSource, additions: tuple) -> str:
    """``vae.precision`` if set; float16 when the shipped VAE's config says force_upcast=false
    (diffusers' own switch, false in the fp16-fixed SDXL VAE); else the contract's precision."""
    if vae_cfg.precision is not None:
        return vae_cfg.precision.value
    replacement = vae_replacement(additions)
    config = replacement.config if replacement is not None else source.configs.get(VAE_FOLDER, {})
    if config.get("force_upcast", True) is False:
        return "float16"
    return vae_precision(source.arch)


def vae_replacement(additions: tuple) -> VaeAddition | None:
    return next((a for a in additions if isinstance(a, VaeAddition)), None)


def latent_scaling_factor(source: ResolvedSource, additions: tuple) -> float:
    """The scaling factor of the VAE the build ships: the replacement's, else the model's."""
    vae = vae_replacement(additions)
    return vae.scaling_factor if vae is not None else source.arch.vae_scaling_factor


def _folder_vae(kind: str, where: str, path: Path, allow_pickle: bool) -> VaeAddition:
    if not path.is_dir():
        raise SdbuildError(f"VAE folder {where} does not exist",
                           "set vae.path to an AutoencoderKL folder (config.json + weights) or a model folder with vae/")
    folder = path if (path / CONFIG_FILE).is_file() else path / VAE_FOLDER
    if not (folder / CONFIG_FILE).is_file():
        raise SdbuildError(f"VAE {where} has no {CONFIG_FILE} (nor {VAE_FOLDER}/{CONFIG_FILE})",
                           "point vae at an AutoencoderKL folder or at a diffusers model folder")
    config = read_json(folder / CONFIG_FILE)
    weights = weight_files(folder, allow_pickle)  # checks safetensors headers (truncation) and the pickle policy

    def load() -> "torch.nn.Module":
        import torch
        from diffusers import AutoencoderKL

        from sdbuild.sources.load import _summary
        from sdbuild.sources.models import quiet_loading

        try:
            with quiet_loading():
                return AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32, use_safetensors=weights.safetensors)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise SdbuildError(f"could not load the VAE {where} ({_summary(error)})",
                               "re-download or re-export the VAE; its config.json must match the weights") from error

    digest = files_digest(folder, [folder / CONFIG_FILE, *weights.files])
    return VaeAddition(kind, where, digest, config, load)


def _file_vae(path: str | None, source: ResolvedSource) -> VaeAddition:
    if not path:
        raise SdbuildError("vae.source=file needs vae.path", "set vae.path=<vae>.safetensors")
    file = Path(path).expanduser().resolve()
    where = f"'{path}'"
    if not file.is_file():
        raise SdbuildError(f"VAE file {where} does not exist", "set vae.path to an original-layout VAE .safetensors")
    if file.suffix != _SAFETENSORS:
        raise SdbuildError(f"VAE file {where} is not a .safetensors file",
                           "re-save it as .safetensors (pickle VAE files are not read), or use a diffusers VAE folder")
    check_safetensors(file)
    config = source.configs[VAE_FOLDER]  # an original-layout file is a VAE of the model's own shape
    _check_file_shapes(file, config, where)

    def load() -> "torch.nn.Module":
        from diffusers import AutoencoderKL

        from sdbuild.sources.models import build_from_config, quiet_loading
        from sdbuild.sources.single_file import open_checkpoint

        with open_checkpoint(file) as checkpoint:
            state = _converted(checkpoint, config)
        with quiet_loading():
            model = build_from_config(AutoencoderKL, config)
        model.load_state_dict(state, strict=True)
        return model

    digest = json_digest({"file": file_sha256(file), "config": config})
    return VaeAddition("file", where, digest, config, load)


def _converted(checkpoint, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = convert_ldm_vae_checkpoint(checkpoint, config)
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}


def _check_file_shapes(file: Path, config: dict, where: str) -> None:
    """Convert the header's shapes (meta tensors, no data read) and compare with the config's model."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors import safe_open

    from sdbuild.sources.models import model_shapes
    from sdbuild.sources.single_file import state_mismatch

    with safe_open(str(file), framework="pt") as handle:
        shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
    header = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    try:
        state = _converted(header, config)
    except (KeyError, IndexError, RuntimeError, ValueError) as error:
        raise SdbuildError(f"VAE file {where} is not an original-layout VAE ({type(error).__name__}: {error})",
                           "use a VAE .safetensors in the original (LDM) layout, or a diffusers VAE folder with vae.source=local") from error
    problem = state_mismatch(state, model_shapes(AutoencoderKL, config))
    if problem:
        raise SdbuildError(f"VAE file {where} does not fit the model's VAE: it {problem}",
                           "use a VAE made for this model family (or a diffusers VAE folder with its own config.json)")


def _synthetic_vae(source: ResolvedSource, seed: int) -> VaeAddition:
    from sdbuild.sources.synthetic_weights import build_synthetic_submodel

    config = source.configs[VAE_FOLDER]
    seeded = dataclasses.replace(source, seed=seed)  # the synthetic weights of this config and seed
    digest = json_digest({"config": config, "seed": seed, "scheme": SYNTHETIC_SCHEME_VERSION})
    return VaeAddition("synthetic", f"synthetic (seed {seed})", digest, config,
                       lambda: build_synthetic_submodel(seeded, VAE_FOLDER))


def _check_fits(config: dict, source: ResolvedSource, where: str) -> None:
    """One line naming the VAE and the model when the VAE cannot decode the model's latents."""
    model = f"model {source.model_id}"
    name = config.get("_class_name", VAE_CLASS)
    if name != VAE_CLASS:
        raise SdbuildError(f"VAE {where} is a {name}, not an {VAE_CLASS}", f"{model} needs an {VAE_CLASS}")
    channels = int(config.get("latent_channels", 4))
    if channels != source.arch.latent_channels:
        raise SdbuildError(
            f"VAE {where} has latent_channels={channels} but {model} has {source.arch.latent_channels}",
            "use a VAE of the model's family (SD 1.x/2.x/SDXL VAEs have 4 latent channels)",
        )
    downscale = 2 ** (len(config.get("block_out_channels", [0])) - 1)
    colours = (config.get("in_channels", 3), config.get("out_channels", 3))
    if downscale != _DOWNSCALE or colours != (3, 3):
        raise SdbuildError(
            f"VAE {where} maps {colours[0]}-channel images to latents {downscale}x smaller, "
            f"but {model} needs 3-channel images {_DOWNSCALE}x larger than its latents",
            "use a VAE of the model's family",
        )


def write_synthetic_vae(architecture: str, seed: int, dest: Path) -> Path:
    """The synthetic VAE of (``architecture``, ``seed``): a diffusers AutoencoderKL folder, or, for
    ``*.safetensors``, one file in the original (LDM) layout as standalone VAEs are published."""
    from safetensors.torch import save_file

    from sdbuild.package_io import replace_path, staging_path
    from sdbuild.sources.models import quiet_loading
    from sdbuild.sources.original_layout import VAE_PREFIX, original_state_dict
    from sdbuild.sources.synthetic import resolve_synthetic
    from sdbuild.sources.synthetic_weights import build_synthetic_submodel

    source = resolve_synthetic(architecture, seed)
    model = build_synthetic_submodel(source, VAE_FOLDER)
    dest = Path(dest)
    with staging_path(dest) as staged:
        if dest.suffix == _SAFETENSORS:
            state = original_state_dict(source.arch.family, VAE_FOLDER, source.configs[VAE_FOLDER], model.state_dict())
            save_file({k.removeprefix(VAE_PREFIX): v.contiguous() for k, v in state.items()}, staged,
                      metadata={"format": "pt"})
        else:
            with quiet_loading():
                model.save_pretrained(staged)
        replace_path(staged, dest)
    return dest


def synth_vae_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sdbuild synth-vae",
        description="Write a synthetic VAE: an AutoencoderKL folder, or an original-layout .safetensors file.",
    )
    parser.add_argument("--architecture", default="tiny-sd15", help="a bundled architecture (default tiny-sd15)")
    parser.add_argument("--seed", type=int, default=1, help="synthetic weights' seed (default 1)")
    parser.add_argument("--out", required=True, type=Path, help="a folder, or a *.safetensors file")
    args = parser.parse_args(argv)
    print(write_synthetic_vae(args.architecture, args.seed, args.out))
    return 0
