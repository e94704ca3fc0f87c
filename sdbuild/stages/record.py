"""What the manifest records of a build: the spec's choices, the stored files, and each
component's fields as its stage results set them (see `StageResult.record`)."""

from __future__ import annotations

from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.manifest import ComponentInfo, FileInfo, InterfaceInfo, Manifest, RecipeInfo, SourceInfo
from sdbuild.package_io import file_size, package_digest
from sdbuild.plan import ComponentJob
from sdbuild.sources.additions import identities
from sdbuild.sources.vae import latent_scaling_factor
from sdbuild.spec import BuildSpec
from sdbuild.versions import tool_versions


def component_info(spec: BuildSpec, job: ComponentJob, stored: FileInfo, fields: dict) -> ComponentInfo:
    return ComponentInfo(
        **stored.model_dump(),
        interface=InterfaceInfo.model_validate(job.interface.as_dict()),
        precision=job.precision,
        deployment_target=spec.deployment_target,
        compute_units=spec.compute_units,
        attention=job.attention,
        **fields,
    )


def build_manifest(spec: BuildSpec, components: dict[str, ComponentInfo], tokenizer: list[FileInfo]) -> Manifest:
    source = spec.source
    return Manifest(
        build_id=spec.build_id,
        recipe=RecipeInfo(name=spec.recipe, config=spec.build_config),
        source=SourceInfo(
            kind=source.kind,
            model_id=source.model_id,
            revision=source.revision,
            digest=source.digest,
            architecture=source.arch.name,
            family=source.arch.family,
            scheduler=source.configs.get("scheduler", {}),
            latent_scaling_factor=latent_scaling_factor(source, spec.additions),  # the shipped VAE's
            prediction_type=source.arch.prediction_type,
        ),
        latent_size=list(spec.latent_size),
        batch_size=spec.batch_size,
        attention=spec.attention,
        deployment_target=spec.deployment_target,
        compute_units=spec.compute_units,
        tokenizer=tokenizer,
        components=components,
        tools=tool_versions(),
        additions=identities(spec.additions),
    )


def file_info(root: Path, path: Path) -> FileInfo:
    if not path.exists():
        raise SdbuildError(f"expected build output {path} is missing", "this is a bug in sdbuild; please report it")
    return FileInfo(file=path.relative_to(root).as_posix(), sha256=package_digest(path), bytes=file_size(path))
