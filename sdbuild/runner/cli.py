"""`sdbuild-run` / `make run`: generate an image from a build's manifest.

    sdbuild-run --prompt "a photo of an astronaut riding a horse" [--build DIR | --recipe NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.folders import check_folder, disk_full_error
from sdbuild.interrupts import report_interrupt
from sdbuild.package_io import replace_path, staging_path
from sdbuild.quiet import silence_progress_bars
from sdbuild.manifest import MANIFEST_FILE
from sdbuild.progress import quiet_mode
from sdbuild.runner.backends import BACKENDS
from sdbuild.runner.inpaint import INPAINTING_STRENGTH, check_mask_files
from sdbuild.runner.pipeline import SCHEDULERS, GenerationSettings, Pipeline, settings_record
from sdbuild.runner.refiner import add_refiner_arguments, check_refiner_settings, generate_with_refiner


def latest_build(outputs: Path, recipe: str) -> Path:
    """The most recently built folder of ``recipe`` under ``outputs``."""
    builds = [m.parent for m in (outputs / recipe).glob(f"*/{MANIFEST_FILE}") if not m.parent.name.startswith(".")]
    if not builds:
        raise SdbuildError(f"no build of recipe '{recipe}' under {outputs}",
                           f"run `make build RECIPE={recipe}` first, or pass --build DIR")
    return max(builds, key=lambda p: (p / MANIFEST_FILE).stat().st_mtime)


def check_init_image(path: str) -> None:
    """A missing or unreadable picture fails before any model is loaded."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError) as error:  # PIL reports some damaged files as SyntaxError
        raise SdbuildError(f"--init-image {path} is not a readable image ({error})",
                           "pass a PNG or JPEG file") from None


def check_output(path: Path) -> None:
    """The PNG's folder must be writable before minutes of generation, not after."""
    if path.is_dir():
        raise SdbuildError(f"--output {path} is a folder", "give a file name, e.g. --output images/out.png")
    check_folder(path.parent, "--output")
    existing = next(p for p in path.absolute().parents if p.exists())
    if not os.access(existing, os.W_OK):
        raise SdbuildError(f"--output {path}: cannot write in {existing}", "choose a folder you can write to")


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults = GenerationSettings(prompt="")
    parser = argparse.ArgumentParser(prog="sdbuild-run", description="Generate an image from an sdbuild build.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--build", type=Path, help="a build folder (outputs/<recipe>/<build-id>)")
    where.add_argument("--recipe", default="tiny", help="use the latest build of this recipe (default: tiny)")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help="where builds live (default: outputs)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default=defaults.negative_prompt)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--guidance-scale", type=float, default=defaults.guidance_scale)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=defaults.scheduler)
    parser.add_argument("--init-image", help="image-to-image: start from this picture (needs vae_encoder)")
    parser.add_argument("--mask", help="inpainting: repaint the white part of --init-image (same size; needs an inpainting build)")
    parser.add_argument("--strength", type=float, help=f"image-to-image and inpainting: how much to change it "
                        f"(default {defaults.strength}; {INPAINTING_STRENGTH} with --mask)")
    parser.add_argument("--control-image", action="append", default=[],
                        help="ControlNet builds: the control image (once per ControlNet, in the recipe's order)")
    parser.add_argument("--control-scale", type=float, action="append",
                        help="ControlNet builds: how strongly it steers (default 1.0; once, or once per ControlNet)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: Core ML on macOS, the evaluator elsewhere")
    parser.add_argument("--output", type=Path, help="PNG path (default: <outputs>/images/<recipe>-<seed>-<prompt>.png)")
    parser.add_argument("--quiet", action="store_true", help="no step lines or progress bars (CI logs)")
    add_refiner_arguments(parser, defaults)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    silence_progress_bars()
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        build_dir = args.build or latest_build(args.outputs, args.recipe)
        settings = GenerationSettings(
            prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
            guidance_scale=args.guidance_scale, seed=args.seed, scheduler=args.scheduler,
            init_image=args.init_image, mask=args.mask, backend=args.backend,
            strength=args.strength if args.strength is not None
            else INPAINTING_STRENGTH if args.mask else GenerationSettings.strength,
            control_images=tuple(args.control_image),
            control_scales=tuple(args.control_scale or GenerationSettings.control_scales),
            aesthetic_score=args.aesthetic_score, negative_aesthetic_score=args.negative_aesthetic_score,
            refiner=args.refiner, refine_from=args.refine_from,
        )
        check_refiner_settings(settings)
        if settings.steps < 1:
            raise SdbuildError(f"--steps {settings.steps} is not a positive number", "e.g. --steps 25")
        for flag, value in (("--guidance-scale", settings.guidance_scale), ("--strength", settings.strength)):
            if not math.isfinite(value):  # float() accepts nan and inf; they poison every step
                raise SdbuildError(f"{flag} {value} is not a finite number", f"e.g. {flag} 0.75")
        if args.init_image:
            check_init_image(args.init_image)
        if args.mask:
            check_mask_files(args.init_image, args.mask)
        if args.output:
            check_output(args.output)
        with quiet_mode(args.quiet):
            progress = (lambda text: None) if args.quiet else None
            pipeline = Pipeline(build_dir, backend=args.backend, progress=progress)
            image = generate_with_refiner(pipeline, settings, progress) if args.refiner else pipeline.generate(settings)
        manifest = pipeline.manifest
        slug = re.sub(r"[^a-z0-9]+", "-", args.prompt.lower()).strip("-")[:48] or "image"
        output = args.output or args.outputs / "images" / f"{manifest.recipe.name}-{args.seed}-{slug}.png"
        check_output(output)
        record = settings_record(settings, manifest, pipeline.backend)
        _write_image(image, output, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except SdbuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return report_interrupt(exc, "no image was written")
    print(f"wrote {output} ({image.shape[1]}x{image.shape[0]}) and {output.with_suffix('.json').name}")
    return 0


def _write_image(image, output: Path, settings_json: str) -> None:
    """The PNG and its settings JSON, each renamed into place when complete: never half a file."""
    from PIL import Image

    writers = ((output, lambda p: Image.fromarray(image).save(p, format="PNG")),
               (output.with_suffix(".json"), lambda p: p.write_text(settings_json)))
    try:
        for path, write in writers:
            with staging_path(path) as staged:
                write(staged)
                replace_path(staged, path)
    except OSError as error:
        raise disk_full_error(error, output) or SdbuildError(
            f"cannot write {output} ({error.strerror or error})", "choose a folder you can write to") from error
