"""Where recipes and config groups come from: the package's own conf/ plus the user's recipe folders.

conf/ travels inside the package (`sdbuild/conf` links to the repo's top-level `conf/`, whose
`recipe` group links to `recipes/`; a wheel holds real copies), so an installed sdbuild builds
from any directory. Folders of the user's own recipes (`--recipes DIR`, or SDBUILD_RECIPES) are
served to Hydra as more options of the `recipe` group: `recipe=NAME` finds `DIR/NAME.yaml`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource

from sdbuild.errors import SdbuildError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PRIMARY_CONFIG = "build"
RECIPE_GROUP = "recipe"
# Folders of extra recipes, separated like PATH (os.pathsep); `--recipes DIR` adds to it.
RECIPES_ENV = "SDBUILD_RECIPES"


class RecipeFolderSource(ConfigSource):
    """`recipes://DIR`: the YAML files of DIR as options of the `recipe` group, and nothing else."""

    @staticmethod
    def scheme() -> str:
        return "recipes"

    def _file(self, config_path: str) -> Path | None:
        group, _, name = config_path.partition("/")
        if group != RECIPE_GROUP or not name:
            return None
        return Path(self.path) / self._normalize_file_name(name)

    def load_config(self, config_path: str) -> ConfigResult:
        path = self._file(config_path)
        if path is None or not path.is_file():
            raise ConfigLoadError(f"Config not found: {config_path} in {self.path}")
        text = path.read_text(encoding="utf-8")
        from omegaconf import OmegaConf

        return ConfigResult(config=OmegaConf.create(text), path=self.full_path(), provider=self.provider,
                            header=ConfigSource._get_header_dict(text[:512]))

    def available(self) -> bool:
        return Path(self.path).is_dir()

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", RECIPE_GROUP)

    def is_config(self, config_path: str) -> bool:
        path = self._file(config_path)
        return path is not None and path.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path == "" and results_filter in (None, ObjectType.GROUP):
            return [RECIPE_GROUP]
        if config_path == RECIPE_GROUP and results_filter in (None, ObjectType.CONFIG):
            return sorted(p.stem for p in Path(self.path).glob("*.yaml"))
        return []


# At import, so that every process composing with a `recipes://` path (multirun workers too) has it.
Plugins.instance().register(RecipeFolderSource)


def recipe_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    """``extra`` folders, then those in SDBUILD_RECIPES; each must exist."""
    from_env = [d for d in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if d]
    dirs = []
    # Hydra takes the first match on its search path: a second recipe of the same name would be
    # silently ignored, so it is refused.
    owners = {p.stem: p.parent for p in (CONF_DIR / RECIPE_GROUP).glob("*.yaml")}
    for entry in [*extra, *from_env]:
        folder = Path(entry).expanduser().resolve()
        if not folder.is_dir():
            raise SdbuildError(f"recipe folder {entry} does not exist",
                               f"pass an existing folder of NAME.yaml recipes to --recipes or {RECIPES_ENV}")
        if folder in dirs:
            continue
        for recipe in sorted(folder.glob("*.yaml")):
            if recipe.stem in owners:
                raise SdbuildError(f"recipe {recipe} has the name of one in {owners[recipe.stem]}",
                                   "rename the file (a recipe's name is its file name)")
            owners[recipe.stem] = folder
        dirs.append(folder)
    return dirs


def searchpath_overrides(dirs: Iterable[Path]) -> list[str]:
    """The Hydra override that adds ``dirs`` to the search path (none for no folders)."""
    entries = [f"'{RecipeFolderSource.scheme()}://{folder}'" for folder in dirs]
    return [f"hydra.searchpath=[{','.join(entries)}]"] if entries else []


def compose_recipe(overrides: list[str], dirs: Iterable[Path] = ()):
    """Compose the primary config with ``overrides`` outside a Hydra run (preflight, validate, API)."""
    from hydra import compose, initialize_config_dir

    from sdbuild.config.schema import register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(PRIMARY_CONFIG, overrides=[*overrides, *searchpath_overrides(dirs)])
