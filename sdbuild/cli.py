"""`sdbuild` / `python -m sdbuild`: build recipes (a Hydra app), check recipes, inspect builds.

`sdbuild --help` shows the forms and every subcommand (from SUBCOMMANDS below).
"""

from __future__ import annotations

import importlib
import os
import sys

from omegaconf import OmegaConf

from sdbuild.config.search_path import (  # noqa: F401  (CONF_DIR, compose_recipe: for tests and tools)
    CONF_DIR, PRIMARY_CONFIG, RECIPES_ENV, compose_recipe, recipe_dirs, searchpath_overrides,
)
from sdbuild.environ import scoped_environ
from sdbuild.errors import SdbuildError
from sdbuild.interrupts import report_interrupt
from sdbuild.preflight import preflight
from sdbuild.progress import quiet_mode
from sdbuild.quiet import silence_progress_bars

# name -> (module, function, what it does): dispatch and `sdbuild --help` both read this table.
SUBCOMMANDS = {
    "validate": ("sdbuild.recipe_cli", "validate_main", "resolved config, plan and build id of a recipe; writes nothing"),
    "ls": ("sdbuild.recipe_cli", "ls_main", "recipes and every config group's options, with descriptions"),
    "schema": ("sdbuild.recipe_cli", "schema_main", "the manifest's JSON Schema [--out FILE]"),
    "verify": ("sdbuild.inspect_cli", "verify_main", "recompute every hash of a build, check its manifest"),
    "diff": ("sdbuild.inspect_cli", "diff_main", "compare two builds"),
    "expect": ("sdbuild.inspect_cli", "expect_main", "check a build against committed expectations [--update]"),
    "bundle": ("sdbuild.inspect_cli", "bundle_main", "compiled Resources/ folder for Swift apps (macOS)"),
    "cache": ("sdbuild.inspect_cli", "cache_main", "the stage cache: list | prune"),
    "mixed-bit": ("sdbuild.inspect_cli", "mixed_bit_main", "mixed-bit palettization pre-analysis"),
    "synth-file": ("sdbuild.sources.synthetic_file", "synth_file_main",
                   "write a synthetic model as one original-layout checkpoint (--architecture A --out F)"),
    "synth-controlnet": ("sdbuild.sources.synthetic_controlnet", "synth_controlnet_main",
                         "write a seeded ControlNet: a diffusers folder or an original-layout file (--out)"),
    "synth-vae": ("sdbuild.sources.vae", "synth_vae_main",
                  "write a synthetic VAE: a diffusers folder or an original-layout file (--seed S --out F)"),
    "synth-embedding": ("sdbuild.sources.embeddings", "synth_embedding_main",
                        "write a synthetic textual-inversion embedding (--token T --vectors N --out F)"),
    "synth-lora": ("sdbuild.sources.synthetic_lora", "synth_lora_main",
                   "write a seeded synthetic LoRA file (--architecture A --format kohya|peft --out F)"),
}


def usage() -> str:
    """The forms and subcommands; Hydra's help template shows it (conf/build.yaml: hydra.help)."""
    width = max(len(name) for name in SUBCOMMANDS)
    commands = "\n".join(f"  sdbuild {name:<{width}}  {text}" for name, (_, _, text) in SUBCOMMANDS.items())
    return (
        "Build:\n"
        "  sdbuild [recipe=NAME] [group=option ...] [key=value ...]   build one recipe (default: tiny)\n"
        "  sdbuild -m recipe=NAME attention=original,split_einsum     one build per variant (multirun)\n"
        "Commands (sdbuild COMMAND --help for their options):\n"
        f"{commands}\n"
        "Options (before or after the rest):\n"
        f"  --recipes DIR   also offer the recipes in DIR (NAME.yaml) as recipe=NAME; or {RECIPES_ENV}=DIR[:DIR]\n"
        "  --quiet         no progress lines or bars: summaries and errors only (CI logs)"
    )


OmegaConf.register_new_resolver("sdbuild.usage", usage, replace=True)


def main(argv: list[str] | None = None) -> int:
    silence_progress_bars()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, extra_dirs, quiet = _global_options(argv)
        # --recipes folders join SDBUILD_RECIPES: compose, `ls` and multirun workers read them there.
        folders = os.pathsep.join(str(d) for d in recipe_dirs(extra_dirs)) or None
        with quiet_mode(quiet), scoped_environ(RECIPES_ENV, folders):
            if argv and argv[0] in SUBCOMMANDS:
                module, function, _ = SUBCOMMANDS[argv[0]]
                return getattr(importlib.import_module(module), function)(argv[1:])
            return _build_main(argv)
    except SdbuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return report_interrupt(exc, "nothing was published; run it again to resume from the cache")
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """`sdbuild ls | head`: the reader closed the pipe. Stop quietly, as Unix tools do; stdout goes
    to /dev/null so the interpreter's final flush does not fail a second time."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


def _global_options(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """(the other arguments, --recipes folders, --quiet) wherever they stand."""
    rest, dirs, quiet = [], [], False
    args = iter(argv)
    for arg in args:
        if arg == "--quiet":
            quiet = True
        elif arg == "--recipes":
            folder = next(args, None)
            if folder is None:
                raise SdbuildError("--recipes needs a folder", "e.g. --recipes my_recipes/")
            dirs.append(folder)
        elif arg.startswith("--recipes="):
            dirs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest, dirs, quiet


def _build_main(argv: list[str]) -> int:
    if not CONF_DIR.is_dir():
        raise SdbuildError(f"config folder {CONF_DIR} not found", "reinstall sdbuild (pip install .)")
    argv = [*argv, *searchpath_overrides(recipe_dirs())]
    preflight(argv)
    import hydra

    from sdbuild.config.schema import register_configs

    register_configs()
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=PRIMARY_CONFIG)(_run_build)
    sys.argv = [sys.argv[0], *argv]
    try:
        app()
    except SystemExit as exc:  # Hydra and _run_build end failed runs this way
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _run_build(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:  # each variant builds in its own child process
        from sdbuild.sweep.variant import run_variant

        return run_variant(cfg)
    from sdbuild.builder import build
    from sdbuild.spec import validate

    try:
        build(validate(cfg))
    except SdbuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
