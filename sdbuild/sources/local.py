"""Local sources: a diffusers model folder on disk."""

from __future__ import annotations

from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.sources.resolved import ResolvedSource, arch_from_configs
from sdbuild.sources.snapshot import read_snapshot


def resolve_local(path: str | Path, allow_pickle: bool, name: str | None = None) -> ResolvedSource:
    """``name`` (model.id) is the model id packages carry; default ``local/<folder name>``."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise SdbuildError(
            f"model folder '{path}' does not exist",
            "set model.path to a diffusers model folder (model_index.json, unet/, vae/, ...)",
        )
    configs, digest = read_snapshot(root, allow_pickle)
    model_id = name or f"local/{root.name}"
    return ResolvedSource(
        kind="local", model_id=model_id, revision=None, digest=digest,
        arch=arch_from_configs(model_id, configs, f"'{root}'"), configs=configs, root=root,
        allow_pickle=allow_pickle,
    )
