"""From the recipe's model config to a ResolvedSource."""

from __future__ import annotations

from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.sources.local import resolve_local
from sdbuild.sources.resolved import ResolvedSource
from sdbuild.sources.synthetic import resolve_synthetic

SOURCE_KINDS = ("hub", "local", "file", "synthetic")


def resolve_source(model_cfg, cache_dir: Path | None = None) -> ResolvedSource:
    """Pin ``model_cfg`` (source, id, revision, path, architecture, seed, allow_pickle) to exact
    content. Reads configs and hashes files; builds no model, except that a single file is
    converted into a snapshot folder under ``cache_dir`` (default: the user cache) on first use."""
    kind = model_cfg.source
    if kind == "hub":
        if not model_cfg.id:
            raise SdbuildError("model.source=hub needs model.id", "set model.id=<org>/<name>")
        from sdbuild.sources.hub import resolve_hub  # imports huggingface_hub: only for Hub ids

        return resolve_hub(model_cfg.id, model_cfg.revision, model_cfg.allow_pickle)
    if kind == "local":
        if not model_cfg.path:
            raise SdbuildError(
                "model.source=local needs model.path", "set model.path=<diffusers folder>"
            )
        return resolve_local(model_cfg.path, model_cfg.allow_pickle, model_cfg.id)
    if kind == "file":
        from sdbuild.cache.location import default_cache_dir
        from sdbuild.sources.single_file import resolve_single_file

        return resolve_single_file(model_cfg, cache_dir or default_cache_dir())
    if kind == "synthetic":
        return resolve_synthetic(model_cfg.architecture, model_cfg.seed)
    raise SdbuildError(f"unknown model.source '{kind}'", f"choose one of: {', '.join(SOURCE_KINDS)}")
