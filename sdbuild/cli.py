"""`sdbuild` / `python -m sdbuild`: build recipes (a Hydra app) and inspect builds.

    sdbuild [recipe=NAME] [overrides...]        build one recipe
    sdbuild -m recipe=tiny attention=original,split_einsum   one build per variant (Hydra multirun)
    sdbuild verify BUILD_DIR                    recompute every hash, check the manifest
    sdbuild diff BUILD_A BUILD_B                compare two builds
    sdbuild expect BUILD_DIR FILE [--update]    check a build against committed expectations
    sdbuild bundle BUILD_DIR [--out DIR]        compiled Resources/ folder for Swift apps (macOS)
    sdbuild cache list|prune [...]              the stage cache
    sdbuild mixed-bit [...]                     mixed-bit palettization pre-analysis
"""

from __future__ import annotations

import sys

from sdbuild.errors import SdbuildError
from sdbuild.interrupts import report_interrupt
from sdbuild.preflight import CONF_DIR, PRIMARY_CONFIG, preflight
from sdbuild.quiet import silence_progress_bars


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
    except KeyboardInterrupt as exc:
        return report_interrupt(exc, "nothing was published; run it again to resume from the cache")


def _subcommands() -> dict:
    from sdbuild import inspect_cli

    return {
        "verify": inspect_cli.verify_main,
        "diff": inspect_cli.diff_main,
        "expect": inspect_cli.expect_main,
        "bundle": inspect_cli.bundle_main,
        "cache": inspect_cli.cache_main,
        "mixed-bit": inspect_cli.mixed_bit_main,
    }


def _build_main(argv: list[str]) -> int:
    if not CONF_DIR.is_dir():
        raise SdbuildError(f"config folder {CONF_DIR} not found", "run sdbuild from its git clone (pip install -e .)")
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
    from sdbuild.builder import build
    from sdbuild.spec import validate

    try:
        build(validate(cfg))
    except SdbuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
