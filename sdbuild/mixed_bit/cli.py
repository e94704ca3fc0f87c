"""`sdbuild mixed-bit` (or `python -m sdbuild.mixed_bit`): analyse a UNet and write layer plans for
the average bit widths asked for. A plan whose measured PSNR is under the gate its build will
apply (`--min-psnr`, the builds' `min_psnr` default) is not written: its build would fail."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from sdbuild.config.compression import PALETTE_NBITS
from sdbuild.errors import SdbuildError
from sdbuild.mixed_bit.analysis import FLOAT_BITS, AnalysisSettings, analyse
from sdbuild.mixed_bit.layer_plan import (
    choose_layer_plan, measure_layer_plan, meets_gate, summary_table, write_layer_plan,
)

DEFAULT_GATE_DB = 35.0  # the builds' min_psnr.default (tests check that they agree)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdbuild mixed-bit", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--architecture", help="bundled architecture with seeded weights (e.g. sd21-base)")
    source.add_argument("--path", help="local diffusers folder")
    source.add_argument("--hub-id", help="Hugging Face Hub repo id")
    parser.add_argument("--revision", help="Hub revision")
    parser.add_argument("--seed", type=int, default=0, help="synthetic weights' seed")
    parser.add_argument("--targets", type=float, nargs="+", required=True, help="average bit widths, e.g. 3 4 4.5")
    parser.add_argument("--out-dir", type=Path, required=True, help="where layer plan JSON files go")
    parser.add_argument("--name", help="layer plan file prefix (default: from the model id)")
    parser.add_argument("--min-psnr", type=float, default=DEFAULT_GATE_DB,
                        help="UNet PSNR (dB) a plan must reach to be written: the min_psnr.unet you build with")
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
        run(args, command=" ".join(["sdbuild mixed-bit", *argv]))
    except SdbuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def check_targets(targets: list[float], bit_widths: list[int]) -> None:
    """Refuse average bit widths no layer plan can reach, before the analysis (minutes at real size)."""
    lowest = min(bit_widths)
    for target in targets:
        if not math.isfinite(target) or not lowest <= target <= FLOAT_BITS:
            raise SdbuildError(f"--targets {target:g} is not a reachable average: layers get {lowest} to {FLOAT_BITS} bits",
                               f"give targets from {lowest} to {FLOAT_BITS}, e.g. --targets 3 4 4.5")


def run(args: argparse.Namespace, command: str) -> list[Path]:
    from sdbuild.cache import default_cache_dir
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
    plans = []
    for target in args.targets:
        plan = choose_layer_plan(analysis, target)
        plan.psnr_db = measure_layer_plan(unet, plan, settings)
        plans.append(plan)
    table = summary_table(plans, args.min_psnr)
    passing = [p for p in plans if meets_gate(p, args.min_psnr)]
    if not passing:
        best = max(plans, key=lambda p: p.psnr_db)
        raise SdbuildError(
            f"no layer plan reaches the {args.min_psnr:g} dB gate its build would apply: the best, for "
            f"{best.target_bits:g} bits, measures {best.psnr_db:.1f} dB, so nothing was written",
            "ask for more bits (--targets), or pass --min-psnr N and build with min_psnr.unet=N",
        )
    paths = [write_layer_plan(plan, args.out_dir, name) for plan in passing]
    (args.out_dir / f"{name}_summary.md").write_text(
        f"# Mixed-bit layer plans for {source.model_id}\n\nmade with: `{command}`\n\n"
        f"settings: {json.dumps(asdict(settings))}\n\n{table}\n")
    print(table)
    for plan in plans:
        if plan not in passing:
            print(f"not written: the {plan.target_bits:g}-bit plan measures {plan.psnr_db:.1f} dB, under the "
                  f"{args.min_psnr:g} dB gate its build would fail (ask for more bits, or --min-psnr)")
    for path in paths:
        print(f"wrote {path}  (use: quantization=mixed_bit quantization.mixed_bit_recipe={path})")
    return paths
