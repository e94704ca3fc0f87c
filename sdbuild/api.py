"""The Python API: build a recipe, open a finished build.

    import sdbuild
    result = sdbuild.build("sd2-ane", overrides=["model.source=synthetic"])
    result.build_dir, result.manifest
    build = sdbuild.open_build(result.build_dir)     # every hash checked first
    build.component_path("unet"), build.files

Imports nothing heavy until called: `import sdbuild` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from sdbuild.errors import SdbuildError

if TYPE_CHECKING:
    from sdbuild.builder import BuildResult
    from sdbuild.manifest import Manifest
    from sdbuild.spec import BuildSpec


def build(recipe: str, overrides: Iterable[str] = (), recipes: Iterable[str | Path] = ()) -> "BuildResult":
    """Build ``recipe`` with Hydra-style ``overrides`` (``"attention=original"``, ``"output.dir=..."``).

    ``recipes``: extra folders of recipe files (as ``--recipes``; SDBUILD_RECIPES is read too).
    Raises SdbuildError on a bad recipe or a failed gate; nothing is published then.
    """
    from sdbuild.builder import build as run_build

    return run_build(validated_spec([f"recipe={recipe}", *overrides], recipes))


def validated_spec(overrides: Iterable[str], recipes: Iterable[str | Path] = ()) -> "BuildSpec":
    """Compose ``overrides`` with the user's recipe folders and validate; writes nothing."""
    from sdbuild.config.errors import config_error
    from sdbuild.config.search_path import CONF_DIR, compose_recipe, recipe_dirs
    from sdbuild.spec import validate

    dirs = recipe_dirs(recipes)
    try:
        cfg = compose_recipe(list(overrides), dirs)
    except Exception as exc:  # Hydra and OmegaConf raise many types; all mean a bad recipe
        raise config_error(exc, (CONF_DIR, *dirs)) from exc
    return validate(cfg)


@dataclass(frozen=True)
class OpenedBuild:
    """A finished build whose files all match its manifest."""

    build_dir: Path
    manifest: "Manifest"
    files: dict[str, Path]  # every file the manifest records -> the resolved path that was hashed

    def component_path(self, component: str) -> Path:
        info = self.manifest.components.get(component)
        if info is None:
            raise SdbuildError(f"build {self.build_dir} has no component {component!r}",
                               f"it has: {', '.join(self.manifest.components)}")
        return self.files[info.file]


def open_build(path: str | Path) -> OpenedBuild:
    """The build at ``path`` after checking its manifest's schema and every file's SHA-256."""
    from sdbuild.manifest import check_build

    check = check_build(Path(path)).intact()
    return OpenedBuild(check.build_dir, check.manifest, check.paths)
