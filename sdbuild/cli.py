"""`sdbuild` / `python -m sdbuild`: build recipes (a Hydra app) and inspect builds.

    sdbuild [recipe=NAME] [overrides...]        build one recipe
    sdbuild -m recipe=tiny attention=original,split_einsum   one build per variant (Hydra multirun)
    sdbuild verify BUILD_DIR                    recompute every hash, check the manifest
    sdbuild diff BUILD_A BUILD_B                compare two builds
    sdbuild expect BUILD_DIR FILE [--update]    check a build against committed expectations
    sdbuild bundle BUILD_DIR [--out DIR]        compiled Resources/ folder for Swift apps (macOS)
    sdbuild cache list|prune [...]              the stage cache
    sdbuild mixed-bit [...]                     mixed-bit palettization pre-analysis
    sdbuild synth-file --architecture A --out F  a synthetic model as one original-layout checkpoint
"""

from __future__ import annotations

import sys
from pathlib import Path

from sdbuild.errors import SdbuildError, describe_config_error
from sdbuild.quiet import silence_progress_bars

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PRIMARY_CONFIG = "build"


def main(argv: list[str] | None = None) -> int:
    silence_progress_bars()
    argv = list(sys.argv[1:] if argv is None else argv)
    subcommands = _subcommands()
    try:
        if argv and argv[0] in subcommands:
            return subcommands[argv[0]](argv[1:])
        return _build_main(argv)
    except SdbuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _subcommands() -> dict:
    from sdbuild import inspect_cli

    return {
        "verify": inspect_cli.verify_main,
        "diff": inspect_cli.diff_main,
        "expect": inspect_cli.expect_main,
        "bundle": inspect_cli.bundle_main,
        "cache": inspect_cli.cache_main,
        "mixed-bit": inspect_cli.mixed_bit_main,
        "synth-file": _synth_file_main,
    }


def _synth_file_main(argv: list[str]) -> int:
    from sdbuild.sources.synthetic_file import synth_file_main  # imports torch: only when called

    return synth_file_main(argv)


def compose_recipe(overrides: list[str]):
    """Compose the primary config with ``overrides`` outside a Hydra run (tests, preflight)."""
    from hydra import compose, initialize_config_dir

    from sdbuild.config.schema import register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(PRIMARY_CONFIG, overrides=overrides)


def _build_main(argv: list[str]) -> int:
    if not CONF_DIR.is_dir():
        raise SdbuildError(f"config folder {CONF_DIR} not found", "run sdbuild from its git clone (pip install -e .)")
    multirun = any(a in ("-m", "--multirun") for a in argv)
    flags = [a for a in argv if a.startswith("-")]
    if not multirun and not flags:
        _preflight(argv)
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


def _preflight(overrides: list[str]) -> None:
    """Compose once up front so config mistakes come out as one clear line, not a Hydra dump."""
    try:
        compose_recipe(overrides)
    except Exception as exc:  # Hydra and OmegaConf raise many types; all mean a bad recipe
        raise SdbuildError(describe_config_error(exc), "see README: Recipes and overrides") from exc


def _run_build(cfg) -> None:
    from sdbuild.builder import build
    from sdbuild.spec import validate

    try:
        build(validate(cfg))
    except SdbuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
