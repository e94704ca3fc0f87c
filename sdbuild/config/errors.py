"""Hydra/OmegaConf/YAML errors -> one SdbuildError that keeps what the user needs: the file, line
and column, the offending key, and the closest valid name ("did you mean ...").

Hydra wraps the useful part several exceptions deep and spreads it over many lines; this digs it
out. Line numbers of a bad key are found by reading the recipe file's YAML nodes, since Hydra
does not keep them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path

from sdbuild.errors import SdbuildError

RECIPES_HINT = "see README: Recipes and overrides"
# "In 'recipe/tiny': ..." : the config file Hydra was composing when it failed.
_IN_CONFIG = re.compile(r"^In '(?P<config>[^']+)': ")
_NO_DEFAULTS_MATCH = re.compile(r"Could not override '(?P<group>[^']+)'\. No match in the defaults list")
# A list item's schema (loras[i]) names only its own key: the override or YAML list says which list.
_MERGING_OVERRIDE = re.compile(r"^Error merging override (?P<key>[^=]+)=")


def config_error(exc: BaseException, conf_dirs: tuple[Path, ...] = ()) -> SdbuildError:
    """The user-facing error for a failed composition or schema merge; ``conf_dirs`` (the primary
    config folder, then any search path) locate the config files Hydra names."""
    import yaml
    from hydra.errors import MissingConfigException

    for cause in _causes(exc):
        if isinstance(cause, yaml.MarkedYAMLError):
            return _yaml_error(cause)
    config_file = _config_file(exc, conf_dirs)
    where = f"{_shown(config_file)}: " if config_file else ""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, choice = exc.missing_cfg_file.rpartition("/")
        options = list(exc.options or [])
        if group:
            return SdbuildError(f"{where}{group}={choice}: no such option; choose one of: {', '.join(options)}",
                                _suggest(choice, options, RECIPES_HINT))
        return SdbuildError(f"config '{choice}' not found", RECIPES_HINT)
    no_match = _NO_DEFAULTS_MATCH.search(str(exc))
    if no_match and conf_dirs:
        group = no_match["group"].lstrip("/")
        groups = sorted(p.name for p in conf_dirs[0].iterdir() if p.is_dir())
        return SdbuildError(f"{where}'override /{group}' names no config group",
                            _suggest(group, groups, f"groups: {', '.join(groups)}"))
    keyed = next((c for c in _causes(exc) if getattr(c, "full_key", None)), None)
    if keyed is not None:
        merging = _MERGING_OVERRIDE.match(str(exc))
        bare = not re.search(r"[.\[]", keyed.full_key)
        return _key_error(keyed, config_file, f"{merging['key']}: " if merging and bare else "")
    first_line = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
    return SdbuildError(f"{where}{_IN_CONFIG.sub('', first_line)}" if where else first_line, RECIPES_HINT)


def _key_error(cause: BaseException, config_file: Path | None, override: str = "") -> SdbuildError:
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    full_key = cause.full_key
    key = str(getattr(cause, "key", None) or full_key.rpartition(".")[2])
    place = override
    if config_file is not None:
        full_key = _list_item_key(config_file, full_key) or full_key
        line_column = _key_position(config_file, full_key)
        place = f"{_shown(config_file)}, line {line_column[0]}, column {line_column[1]}: " if line_column \
            else f"{_shown(config_file)}: "
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        known = _field_names(getattr(cause, "object_type", None))
        parent = full_key[: -len(key)] if full_key.endswith(key) else ""
        return SdbuildError(f"{place}unknown key '{full_key}'",
                            _suggest(key, known, f"keys here: {', '.join(known)}" if known else RECIPES_HINT, parent))
    message = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
    return SdbuildError(f"{place}{full_key}: {message}" if full_key not in message else f"{place}{message}",
                        RECIPES_HINT)


def _yaml_error(error) -> SdbuildError:
    mark, context_mark = error.problem_mark or error.context_mark, error.context_mark
    place = f"{_shown(Path(mark.name))}, line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    hint = "fix the YAML syntax there"
    if error.context and context_mark is not None and context_mark is not mark:
        what = error.context.removeprefix("while parsing ")
        hint += f"; {what} starts at line {context_mark.line + 1}, column {context_mark.column + 1}"
    return SdbuildError(f"{place}{error.problem or error.context}", hint)


def _suggest(word: str, choices: list[str], fallback: str, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{prefix}{close[0]}'?" if close else fallback


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _config_file(exc: BaseException, conf_dirs: tuple[Path, ...]) -> Path | None:
    match = _IN_CONFIG.match(str(exc))
    # Hydra names the primary config (top level) for mistakes on the command line: no file to show.
    if match is None or "/" not in match["config"]:
        return None
    found = [path for folder in conf_dirs if (path := folder / f"{match['config']}.yaml").is_file()]
    return found[0].resolve() if found else None


def _key_position(config_file: Path, full_key: str) -> tuple[int, int] | None:
    """1-based line and column of ``full_key`` (dotted) in a YAML file, when it is written there."""
    import yaml

    try:
        node = yaml.compose(config_file.read_text())
    except (OSError, yaml.YAMLError):
        return None
    position = None
    for part in full_key.split("."):
        name, _, index = part.partition("[")  # loras[0]: the item of a list
        if not isinstance(node, yaml.MappingNode):
            return position
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == name), None)
        if match is None:
            return position
        position = (match[0].start_mark.line + 1, match[0].start_mark.column + 1)
        node = match[1]
        if index:
            items = node.value if isinstance(node, yaml.SequenceNode) else []
            if int(index.rstrip("]")) >= len(items):
                return position
            node = items[int(index.rstrip("]"))]
    return position


def _list_item_key(config_file: Path, key: str) -> str | None:
    """``list[i].key`` for a bare ``key`` that is written only inside a list's mapping item."""
    import yaml

    try:
        node = yaml.compose(config_file.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(node, yaml.MappingNode) or any(getattr(k, "value", None) == key for k, _ in node.value):
        return None
    for name, value in node.value:
        for index, item in enumerate(value.value if isinstance(value, yaml.SequenceNode) else []):
            if isinstance(item, yaml.MappingNode) and any(getattr(k, "value", None) == key for k, _ in item.value):
                return f"{name.value}[{index}].{key}"
    return None


def _field_names(object_type) -> list[str]:
    return [f.name for f in dataclasses.fields(object_type)] if dataclasses.is_dataclass(object_type) else []


def _shown(path: Path) -> str:
    """A path relative to the working folder when it is inside it: shorter, and clickable in editors."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
