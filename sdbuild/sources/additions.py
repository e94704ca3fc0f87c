"""What a recipe adds to its model's weights: LoRA files, another VAE, textual-inversion
embeddings, a ControlNet checkpoint.

Each is resolved during validation (files checked and hashed, nothing loaded) into an ``Addition``
that names the submodel folders it changes, its identity (content digests and settings: part of
the build id and of each affected component's cache key) and how it changes a loaded submodel.
Loading a folder chains the additions that touch it: a replacement (another VAE, a ControlNet)
ignores the source's module; an edit (LoRA, embeddings) changes it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from sdbuild.config.schema import BuildConfig
    from sdbuild.sources.resolved import ResolvedSource

SubmodelLoader = Callable[[], "torch.nn.Module"]


class Addition(Protocol):
    kind: str  # "vae", "controlnet", "embeddings", "lora": the manifest's and the key's name for it

    @property
    def folders(self) -> tuple[str, ...]:
        """The submodel folders (unet, vae, text_encoder, ...) whose loaded module it changes."""

    def identity(self) -> dict:
        """JSON-able: what the changed weights depend on (file digests, scales, options)."""

    def apply(self, folder: str, load: SubmodelLoader) -> "torch.nn.Module":
        """``folder``'s module with this addition: ``load()`` gives it without (a replacement
        does not call it)."""


def resolve_additions(build: "BuildConfig", source: "ResolvedSource", cache_dir: Path | None) -> tuple[Addition, ...]:
    """The recipe's additions in the order they apply: replacements first, then edits."""
    from sdbuild.sources.controlnet import resolve_controlnets
    from sdbuild.sources.embeddings import resolve_embeddings
    from sdbuild.sources.lora import resolve_loras
    from sdbuild.sources.vae import resolve_vae

    vae = resolve_vae(build.vae, source, build.model.allow_pickle)
    embeddings = resolve_embeddings(build.embeddings, source, build.model.allow_pickle)
    return (
        *([vae] if vae else []),
        *resolve_controlnets(build.controlnet, build.components, source, cache_dir),
        *([embeddings] if embeddings else []),
        *resolve_loras(build, source),
    )


def identities(additions: tuple[Addition, ...]) -> list[dict]:
    """Each addition's kind and identity, in apply order."""
    return [{"kind": a.kind, **a.identity()} for a in additions]


def load_with_additions(source: "ResolvedSource", folder: str, additions: tuple[Addition, ...]) -> "torch.nn.Module":
    from sdbuild.sources.load import load_submodel

    load: SubmodelLoader = lambda: load_submodel(source, folder)  # noqa: E731
    for addition in additions:
        if folder in addition.folders:
            load = (lambda addition, inner: lambda: addition.apply(folder, inner))(addition, load)
    return load()
