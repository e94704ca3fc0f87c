"""What can be chosen: recipes and every config group's options, each with its one-line description.

A description is the file's `description` key when it has one (recipes do), else its header
comment up to the first command (every config file starts with what it builds and the command).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from sdbuild.config.search_path import CONF_DIR, RECIPE_GROUP


@dataclass(frozen=True)
class Option:
    name: str
    description: str
    path: Path


def catalog(dirs: list[Path]) -> dict[str, list[Option]]:
    """Group name (`recipe` first, then folders of conf/ by path) -> its options."""
    groups = {RECIPE_GROUP: _options(CONF_DIR / RECIPE_GROUP)}
    for folder in dirs:
        groups[RECIPE_GROUP] += _options(folder)
    for folder in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONF_DIR).as_posix()
        if group != RECIPE_GROUP and (options := _options(folder)):
            groups[group] = options
    return groups


def describe(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if isinstance(data, dict) and isinstance(data.get("description"), str) and data["description"]:
        return data["description"]
    return _header_sentence(text.splitlines())


def _header_sentence(lines: list[str]) -> str:
    """The header comment's first paragraph as one line, up to its first command: commands sit on
    their own indented comment lines or after two spaces."""
    words = []
    for line in lines:
        if not line.startswith("#") or line.startswith("#  ") or line.startswith("# @package"):
            if words or not line.startswith("#"):
                break
            continue
        words.append(line[1:].strip())
    return " ".join(words).split("  ")[0].rstrip(":").strip()


def _options(folder: Path) -> list[Option]:
    return [Option(p.stem, describe(p), p) for p in sorted(folder.glob("*.yaml"))]
