"""Hub sources: a Hugging Face repo id, fetched into (or found in) the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
)

from sdbuild.errors import SdbuildError
from sdbuild.sources.resolved import ResolvedSource, arch_from_configs
from sdbuild.sources.snapshot import read_snapshot, weight_globs

# Configs (any JSON: model_index, configs, shard indexes, tokenizer configs) and tokenizer merges.
_METADATA_GLOBS = ["*.json", "tokenizer*/merges.txt"]
_ALTERNATIVES_HINT = (
    "check the id and your network (gated models also need `hf auth login`), or build from a "
    "downloaded folder with model.source=local model.path=<folder> (or use model.source=synthetic)"
)


def hub_allow_patterns(allow_pickle: bool) -> list[str]:
    """What to fetch: configs, tokenizer files and non-variant safetensors weights
    (plus .bin weights only when pickle is allowed)."""
    return _METADATA_GLOBS + weight_globs(allow_pickle)


def resolve_hub(repo_id: str, revision: str | None, allow_pickle: bool) -> ResolvedSource:
    where = f"'{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    root = fetch_snapshot(repo_id, revision, where, hub_allow_patterns(False))
    try:
        configs, digest = read_snapshot(root, allow_pickle=False)
    except SdbuildError:
        if not allow_pickle:
            raise
        # Some submodel has no safetensors: fetch pickle weights too, from the same commit, so
        # that models publishing both formats are never downloaded twice.
        root = fetch_snapshot(repo_id, root.name, where, hub_allow_patterns(True))
        configs, digest = read_snapshot(root, allow_pickle=True)
    return ResolvedSource(
        kind="hub", model_id=repo_id, revision=root.name,  # snapshots/<commit hash>
        digest=digest, arch=arch_from_configs(repo_id, configs, f"Hugging Face model {where}"),
        configs=configs, root=root, allow_pickle=allow_pickle,
    )


def fetch_snapshot(repo_id: str, revision: str | None, where: str, patterns: list[str]) -> Path:
    """The snapshot folder in the Hugging Face cache, downloading what is missing of ``patterns``."""
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except RevisionNotFoundError as error:
        raise SdbuildError(
            f"Hugging Face model {where}: revision not found", _ALTERNATIVES_HINT
        ) from error
    except (RepositoryNotFoundError, HFValidationError) as error:
        raise SdbuildError(
            f"Hugging Face model {where} is unknown (not found, private or gated)", _ALTERNATIVES_HINT
        ) from error
    except LocalEntryNotFoundError as error:
        # Offline (HF_HUB_OFFLINE=1) or the Hub unreachable, and not (completely) in the cache.
        raise SdbuildError(
            f"Hugging Face model {where} is not in the local cache and the Hub cannot be reached",
            _ALTERNATIVES_HINT,
        ) from error
