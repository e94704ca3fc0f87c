"""Check a build command's recipe before Hydra runs anything, so every config mistake is one line
and leaves nothing behind (no run or sweep folder).

A single build is composed here (validation follows in the build itself, before any work). A
sweep (`-m`) is expanded into its variants the way Hydra's basic sweeper does it, and every
variant is composed and validated before the first one starts: a bad option in the last variant
must not surface after the others have built.
"""

from __future__ import annotations

from pathlib import Path

from sdbuild.config.errors import RECIPES_HINT, config_error
from sdbuild.config.search_path import CONF_DIR, RecipeFolderSource, compose_recipe
from sdbuild.errors import SdbuildError

MULTIRUN_FLAGS = ("-m", "--multirun")


def preflight(argv: list[str]) -> None:
    """Raise SdbuildError when the build command ``argv`` names a recipe that cannot build.

    Commands with Hydra flags other than ``-m`` (``--cfg``, ``--config-dir``, ...) are left to Hydra.
    """
    flags = [a for a in argv if a.startswith("-")]
    if any(flag not in MULTIRUN_FLAGS for flag in flags):
        return
    overrides = [a for a in argv if not a.startswith("-")]
    if not flags:
        _compose(overrides)
        return
    from sdbuild.spec import validate

    variants = sweep_variants(overrides)
    for number, variant in enumerate(variants, start=1):
        try:
            validate(_compose(variant))
        except SdbuildError as exc:
            swept = " ".join(v for v in variant if v not in overrides)
            label = f"sweep variant {number} of {len(variants)}" + (f" ({swept})" if swept else "")
            raise SdbuildError(f"{label}: {exc.message}", exc.hint) from exc


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """The override list of each job of a `-m` sweep, in Hydra's order (basic sweeper semantics)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, parsed = OverridesParser.create(), []
    for override in overrides:  # one at a time, so the message names the bad one
        try:
            parsed += parser.parse_overrides([override])
        except HydraException as exc:
            raise SdbuildError(f"cannot parse '{override}': {str(exc).strip().splitlines()[0]}", RECIPES_HINT) from exc
    try:
        (variants,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except HydraException as exc:  # a sweep kind the basic sweeper cannot expand (range, interval)
        raise SdbuildError(str(exc).strip().splitlines()[0], "list the values: key=a,b,c") from exc
    return variants


def _compose(overrides: list[str]):
    try:
        return compose_recipe(overrides)
    except Exception as exc:  # Hydra, OmegaConf and YAML raise many types; all mean a bad recipe
        raise config_error(exc, _config_dirs(overrides)) from exc


def _config_dirs(overrides: list[str]) -> tuple[Path, ...]:
    """The primary config folder, then the folders of a ``hydra.searchpath=[...]`` override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return (CONF_DIR,)
    searched = [entry for o in parsed if o.key_or_group == "hydra.searchpath" for entry in o.value()]
    schemes = ("file://", f"{RecipeFolderSource.scheme()}://")
    return (CONF_DIR, *(Path(e.split("://", 1)[1]) for e in searched if e.startswith(schemes)))
