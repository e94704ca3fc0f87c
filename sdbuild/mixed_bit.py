"""Mixed-bit palettization: which bit width each UNet layer can take, and recipes from that.

Pre-analysis: palettize one layer (conv or linear weight) at a time to each bit width and measure
the PSNR of the UNet's output against the float16 model on fixed seeded inputs. A recipe for a
target average bit width then gives every layer the fewest bits that keep its PSNR above one
common threshold, the highest threshold whose average fits the target. Recipes are JSON
{layer name: nbits} (16 = stays float16), applied by `quantization=mixed_bit` by layer name.

The analysis runs the PyTorch UNet, not the converted ML Program: swapping one weight in place
costs nothing while a converted program would be re-serialized per layer and bit width, it runs
anywhere, and it is exact where it matters: the palettes are the ones a build ships
(`sdbuild.palette.palettized`, same k-means, same seed, on the float16 weights). The
reference is the UNet with float16-rounded weights computed in float32, so the PSNR measures
weight error alone, not float16 activation rounding.

    python -m sdbuild.mixed_bit --architecture tiny-sd21-base --targets 3 4 --out-dir recipes/
    python -m sdbuild.mixed_bit --path /models/sd21-base --targets 4.5 --latent-size 32
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from sdbuild.config.compression import PALETTE_NBITS
from sdbuild.contract import TEXT_SEQUENCE_LENGTH
from sdbuild.errors import SdbuildError
from sdbuild.metrics import psnr
from sdbuild.palette import palettized
from sdbuild.progress import bar

ANALYSIS_VERSION = 1  # bump when the measurement changes, so cached analyses are not reused
FLOAT_BITS = 16


@dataclass(frozen=True)
class AnalysisSettings:
    bit_widths: tuple[int, ...] = PALETTE_NBITS
    num_inputs: int = 2  # seeded (sample, timestep, text) sets, run as one batch
    input_seed: int = 0
    latent_size: int | None = None  # None: the UNet's sample_size
    weight_threshold: int = 2048  # layers with at most this many weights stay float16 (as in builds)
    palette_seed: int = 0  # must equal quantization.seed of the builds using the recipes


@dataclass
class LayerResult:
    name: str  # PyTorch module name, e.g. down_blocks.0.resnets.0.conv1
    elements: int
    psnr_db: dict[int, float]  # bit width -> UNet output PSNR with only this layer palettized


@dataclass
class Analysis:
    identity: str
    settings: AnalysisSettings
    layers: list[LayerResult]
    float_elements: int  # parameters not analysed: they stay float16 in every recipe


@dataclass
class Recipe:
    target_bits: float
    layers: dict[str, int]
    avg_bits: float  # over all UNet parameters, the unanalysed ones at 16
    min_layer_psnr_db: float  # the common threshold every palettized layer meets
    psnr_db: float | None = None  # all of the recipe at once, when measured


Progress = Callable[[str], None]


# ----------------------------------------------------------------------------------------------
# Analysis


def palettizable_layers(unet: nn.Module, weight_threshold: int) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in unet.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.numel() > weight_threshold]


def analyse(unet: nn.Module, settings: AnalysisSettings, *, identity: str | None = None,
            cache_dir: Path | None = None, progress: Progress | None = None) -> Analysis:
    """Per-layer PSNR at each bit width. ``unet``'s weights are rounded to float16 in place.

    With ``cache_dir`` (a build cache, see `sdbuild cache`) a finished analysis is a cache entry
    keyed by the weights' ``identity`` (default: a digest of the weights) and the settings; an
    unfinished one is saved after every layer beside it and resumed from there.
    """
    _check_settings(settings)
    identity = identity or weights_digest(unet)
    round_to_float16(unet)
    inputs = analysis_inputs(unet, settings)
    reference = run_unet(unet, inputs)
    layers = palettizable_layers(unet, settings.weight_threshold)
    if not layers:
        raise SdbuildError(f"the UNet has no conv/linear layer over {settings.weight_threshold} weights",
                           "lower --weight-threshold")
    store = AnalysisStore(cache_dir, identity, settings) if cache_dir is not None else None
    done = store.read() if store else {}
    results = []
    for index, (name, module) in enumerate(bar(layers, "mixed-bit layers"), start=1):
        if name not in done:
            done[name] = {n: _psnr_with(module, n, settings.palette_seed, unet, inputs, reference)
                          for n in settings.bit_widths}
            if store:
                store.save_progress(done)
        results.append(LayerResult(name, module.weight.numel(), done[name]))
        if progress:
            curve = " ".join(f"{n}b:{p:.1f}" for n, p in done[name].items())
            progress(f"[{index}/{len(layers)}] {name}: {curve} dB")
    if store:
        store.finish(done)
    analysed = sum(r.elements for r in results)
    total = sum(p.numel() for p in unet.parameters())
    return Analysis(identity, settings, results, total - analysed)


def weights_digest(module: nn.Module) -> str:
    """sha256 of the float16 weights and their names: the identity of a module's weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def round_to_float16(module: nn.Module) -> None:
    for param in module.parameters():
        param.copy_(param.to(torch.float16).to(param.dtype))


def analysis_inputs(unet: nn.Module, settings: AnalysisSettings) -> dict[str, torch.Tensor]:
    """Seeded UNet inputs in the diffusers layout, one batch item per input set."""
    config = unet.config
    size = settings.latent_size or config.sample_size
    batch = settings.num_inputs
    rng = np.random.default_rng(settings.input_seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    inputs = {
        "sample": normal(batch, config.in_channels, size, size),
        # Spread over the training range: sensitivity differs between early and late steps.
        "timestep": torch.linspace(999, 1, batch).round(),
        "encoder_hidden_states": normal(batch, TEXT_SEQUENCE_LENGTH, config.cross_attention_dim),
    }
    if config.addition_embed_type == "text_time":  # SDXL: pooled text and size conditioning
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": normal(batch, text_dim),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch),
        }
    return inputs


@torch.no_grad()
def run_unet(unet: nn.Module, inputs: dict) -> np.ndarray:
    return unet(**inputs, return_dict=False)[0].numpy()


@torch.no_grad()
def _psnr_with(module: nn.Module, nbits: int, seed: int, unet: nn.Module, inputs: dict,
               reference: np.ndarray) -> float:
    """UNet output PSNR with ``module``'s weight palettized to ``nbits``, then restored."""
    original = module.weight.detach().clone()
    try:
        _palettize_(module, nbits, seed)
        return round(psnr(reference, run_unet(unet, inputs)), 3)
    finally:
        module.weight.copy_(original)


@torch.no_grad()
def _palettize_(module: nn.Module, nbits: int, seed: int) -> None:
    weight = module.weight.detach().to(torch.float16).numpy()
    module.weight.copy_(torch.from_numpy(palettized(weight, nbits, seed).astype(np.float32)))


def _check_settings(settings: AnalysisSettings) -> None:
    bad = [n for n in settings.bit_widths if n not in PALETTE_NBITS]
    if bad or not settings.bit_widths:
        raise SdbuildError(f"bit widths {bad or 'none'} are not palette sizes", f"choose from {PALETTE_NBITS}")
    if settings.num_inputs < 1:
        raise SdbuildError("the analysis needs at least one input set", "use --num-inputs 1 or more")


# ----------------------------------------------------------------------------------------------
# Cache: a finished analysis is a build-cache entry (listed and pruned by `sdbuild cache`); an
# unfinished one is a progress file beside the entries, rewritten after every layer.


def analysis_key(identity: str, settings: AnalysisSettings) -> str:
    from sdbuild.cache import BuildCache

    return BuildCache.key("mixed_bit", {"version": ANALYSIS_VERSION, "identity": identity,
                                        "settings": asdict(settings)})


class AnalysisStore:
    def __init__(self, cache_dir: Path, identity: str, settings: AnalysisSettings):
        from sdbuild.cache import BuildCache

        self.cache = BuildCache(cache_dir)
        self.key = analysis_key(identity, settings)
        self.progress = self.cache.root / "progress" / f"{self.key}.json"
        self.finished = False

    def read(self) -> dict[str, dict[int, float]]:
        """Layers analysed so far: all of a finished analysis, or an unfinished one's head start."""
        finished = self.cache.get(self.key)
        self.finished = finished is not None
        for path in (finished, self.progress):
            if path is not None and path.is_file():
                try:
                    layers = json.loads(path.read_text())["layers"]
                    return {name: {int(n): float(p) for n, p in curve.items()} for name, curve in layers.items()}
                except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                    pass  # a damaged progress file is only a lost head start
        return {}

    def save_progress(self, layers: dict[str, dict[int, float]]) -> None:
        self.progress.parent.mkdir(parents=True, exist_ok=True)
        partial = self.progress.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps({"layers": layers}, sort_keys=True))
        os.replace(partial, self.progress)

    def finish(self, layers: dict[str, dict[int, float]]) -> None:
        if self.finished:
            return
        self.save_progress(layers)
        self.cache.put(self.key, self.progress, {"what": "mixed-bit analysis", "layers": len(layers)})
        self.progress.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Recipes


def choose_recipe(analysis: Analysis, target_bits: float) -> Recipe:
    """The recipe with the highest common PSNR threshold whose average bits fit ``target_bits``."""
    thresholds = sorted({p for layer in analysis.layers for p in layer.psnr_db.values()}, reverse=True)
    for threshold in thresholds:
        layers = {layer.name: _fewest_bits(layer, threshold) for layer in analysis.layers}
        average = average_bits(analysis, layers)
        if average <= target_bits + 1e-9:
            return Recipe(target_bits, layers, round(average, 4), threshold)
    lowest = average_bits(analysis, {layer.name: min(layer.psnr_db) for layer in analysis.layers})
    raise SdbuildError(
        f"no recipe averages {target_bits} bits: the fewest is {lowest:.2f} "
        f"({analysis.float_elements} unanalysed weights stay float16)",
        "pick a higher target, or analyse with lower bit widths / a lower weight threshold",
    )


def _fewest_bits(layer: LayerResult, threshold: float) -> int:
    return min((n for n, p in layer.psnr_db.items() if p >= threshold), default=FLOAT_BITS)


def average_bits(analysis: Analysis, layers: dict[str, int]) -> float:
    sizes = {layer.name: layer.elements for layer in analysis.layers}
    bits = sum(sizes[name] * n for name, n in layers.items()) + FLOAT_BITS * analysis.float_elements
    return bits / (sum(sizes.values()) + analysis.float_elements)


@torch.no_grad()
def measure_recipe(unet: nn.Module, recipe: Recipe, settings: AnalysisSettings) -> float:
    """UNet output PSNR with the whole recipe applied (``unet`` as `analyse` left it)."""
    inputs = analysis_inputs(unet, settings)
    reference = run_unet(unet, inputs)
    modules = dict(unet.named_modules())
    originals = {name: modules[name].weight.detach().clone() for name in recipe.layers}
    try:
        for name, nbits in recipe.layers.items():
            if nbits != FLOAT_BITS:
                _palettize_(modules[name], nbits, settings.palette_seed)
        return round(psnr(reference, run_unet(unet, inputs)), 3)
    finally:
        for name, weight in originals.items():
            modules[name].weight.copy_(weight)


def write_recipe(recipe: Recipe, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}_{recipe.target_bits:.2f}.json"
    path.write_text(json.dumps(recipe.layers, indent=1) + "\n")
    return path


def summary_table(recipes: list[Recipe]) -> str:
    lines = ["| target bits | avg bits | layers at 1/2/4/6/8/16 bits | min layer PSNR dB | recipe PSNR dB |",
             "|---|---|---|---|---|"]
    for r in recipes:
        counts = "/".join(str(sum(1 for n in r.layers.values() if n == b)) for b in (*PALETTE_NBITS, FLOAT_BITS))
        measured = "-" if r.psnr_db is None else f"{r.psnr_db:.1f}"
        lines.append(f"| {r.target_bits:.2f} | {r.avg_bits:.2f} | {counts} | {r.min_layer_psnr_db:.1f} | {measured} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sdbuild.mixed_bit", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--architecture", help="bundled architecture with seeded weights (e.g. sd21-base)")
    source.add_argument("--path", help="local diffusers folder")
    source.add_argument("--hub-id", help="Hugging Face Hub repo id")
    parser.add_argument("--revision", help="Hub revision")
    parser.add_argument("--seed", type=int, default=0, help="synthetic weights' seed")
    parser.add_argument("--targets", type=float, nargs="+", required=True, help="average bit widths, e.g. 3 4 4.5")
    parser.add_argument("--out-dir", type=Path, required=True, help="where recipe JSON files go")
    parser.add_argument("--name", help="recipe file prefix (default: from the model id)")
    parser.add_argument("--bit-widths", type=int, nargs="+", default=list(PALETTE_NBITS))
    parser.add_argument("--num-inputs", type=int, default=AnalysisSettings.num_inputs)
    parser.add_argument("--latent-size", type=int, help="latent side for the analysis (default: native; smaller is faster)")
    parser.add_argument("--weight-threshold", type=int, default=AnalysisSettings.weight_threshold)
    parser.add_argument("--palette-seed", type=int, default=0, help="k-means seed; equal to quantization.seed")
    parser.add_argument("--cache-dir", type=Path, help="build cache for the analysis (default: the builds' one)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        check_targets(args.targets, args.bit_widths)
        run(args, command=" ".join(["python -m sdbuild.mixed_bit", *argv]))
    except SdbuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def check_targets(targets: list[float], bit_widths: list[int]) -> None:
    """Refuse average bit widths no recipe can reach, before the analysis (minutes at real size)."""
    lowest = min(bit_widths)
    for target in targets:
        if not math.isfinite(target) or not lowest <= target <= FLOAT_BITS:
            raise SdbuildError(f"--targets {target:g} is not a reachable average: layers get {lowest} to {FLOAT_BITS} bits",
                               f"give targets from {lowest} to {FLOAT_BITS}, e.g. --targets 3 4 4.5")


def run(args: argparse.Namespace, command: str) -> list[Path]:
    from sdbuild.builder import default_cache_dir
    from sdbuild.config.schema import ModelConfig, SourceKind
    from sdbuild.sources import load_submodel, resolve_source

    if args.architecture:
        model = ModelConfig(source=SourceKind.synthetic, architecture=args.architecture, seed=args.seed)
    elif args.path:
        model = ModelConfig(source=SourceKind.local, path=args.path)
    else:
        model = ModelConfig(source=SourceKind.hub, id=args.hub_id, revision=args.revision)
    source = resolve_source(model)
    settings = AnalysisSettings(bit_widths=tuple(sorted(set(args.bit_widths))), num_inputs=args.num_inputs,
                                latent_size=args.latent_size, weight_threshold=args.weight_threshold,
                                palette_seed=args.palette_seed)
    unet = load_submodel(source, "unet")
    cache_dir = args.cache_dir or default_cache_dir()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    analysis = analyse(unet, settings, identity=source.digest, cache_dir=cache_dir, progress=log)
    name = args.name or source.model_id.replace("/", "_")
    recipes, paths = [], []
    for target in args.targets:
        recipe = choose_recipe(analysis, target)
        recipe.psnr_db = measure_recipe(unet, recipe, settings)
        recipes.append(recipe)
        paths.append(write_recipe(recipe, args.out_dir, name))
    table = summary_table(recipes)
    (args.out_dir / f"{name}_summary.md").write_text(
        f"# Mixed-bit recipes for {source.model_id}\n\nmade with: `{command}`\n\n"
        f"settings: {json.dumps(asdict(settings))}\n\n{table}\n")
    print(table)
    for path in paths:
        print(f"wrote {path}  (use: quantization=mixed_bit quantization.mixed_bit_recipe={path})")
    return paths


if __name__ == "__main__":
    raise SystemExit(main())
