"""The build manifest: everything a runner needs to use a build, and nothing that varies by run.

`manifest.json` is validated against this schema on write and on read. It holds no clocks, hosts
or timings, so two builds of the same recipe from the same source write identical manifests;
those go to `build-info.json` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from sdbuild.errors import SdbuildError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
BUILD_INFO_FILE = "build-info.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorInfo(_Strict):
    name: str
    shape: list[int]
    dtype: Literal["float16", "float32"]


class InterfaceInfo(_Strict):
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


class FileInfo(_Strict):
    file: str  # path relative to the build folder
    sha256: str  # of the file, or of a package folder (sorted relative paths and file hashes)
    bytes: int


class ChunkInfo(FileInfo):
    interface: InterfaceInfo
    weight_bytes: int


class CompressionInfo(_Strict):
    mode: str
    nbits: list[int] = []
    avg_bits_per_weight: float
    weight_bytes_before: int
    weight_bytes_after: int


class OutputCheck(_Strict):
    name: str
    psnr_db: float


class VerificationInfo(_Strict):
    verified: bool
    backend: str | None = None  # "evaluator" (any OS) or "coreml" (macOS)
    threshold_db: float | None = None
    outputs: list[OutputCheck] = []
    chunks_psnr_db: float | None = None  # chunk pipeline vs the whole model
    reason: str | None = None  # why not verified


class ComponentInfo(FileInfo):
    interface: InterfaceInfo
    precision: Literal["float16", "float32"]
    deployment_target: str
    compute_units: str
    attention: str | None = None  # for components whose graph depends on it
    compression: CompressionInfo
    chunks: list[ChunkInfo] = []
    verification: VerificationInfo


class SourceInfo(_Strict):
    kind: Literal["hub", "local", "file", "synthetic"]
    model_id: str
    revision: str | None
    digest: str
    architecture: str
    family: Literal["sd1", "sd2", "sdxl"]
    scheduler: dict
    latent_scaling_factor: float
    prediction_type: str


class RecipeInfo(_Strict):
    name: str
    config: dict


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    build_id: str
    recipe: RecipeInfo
    source: SourceInfo
    latent_size: list[int]
    batch_size: int
    attention: str
    deployment_target: str
    compute_units: str
    tokenizer: list[FileInfo]
    components: dict[str, ComponentInfo]
    tools: dict[str, str]


def write_manifest(manifest: Manifest, build_dir: Path) -> Path:
    path = build_dir / MANIFEST_FILE
    # Re-validate what we are about to write: a schema error here is a bug, caught before publish.
    Manifest.model_validate(manifest.model_dump())
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(build_dir: Path) -> Manifest:
    """Read and validate ``<build_dir>/manifest.json`` (``build_dir`` may be the file itself)."""
    path = build_dir if build_dir.name == MANIFEST_FILE else build_dir / MANIFEST_FILE
    if not path.is_file():
        raise SdbuildError(f"no manifest at {path}", "pass a build folder written by `sdbuild` (outputs/<recipe>/<build-id>)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SdbuildError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})", "rebuild the recipe") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise SdbuildError(
            f"{path} has manifest schema version {version!r}; this sdbuild reads version {SCHEMA_VERSION}",
            "rebuild with this sdbuild, or use the sdbuild version that wrote it",
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SdbuildError(f"{path} does not match the manifest schema: {where}: {first['msg']}", "rebuild the recipe") from exc


def check_build(build_dir: Path) -> tuple[Manifest, list[str]]:
    """The build's manifest and every mismatch between it and the files on disk."""
    from sdbuild.package_io import package_digest

    manifest = read_manifest(build_dir)
    problems = []
    for entry in _recorded_files(manifest):
        path = build_dir / entry.file
        if not path.exists():
            problems.append(f"{entry.file}: missing")
        elif (digest := package_digest(path)) != entry.sha256:
            problems.append(f"{entry.file}: sha256 {digest[:12]}... does not match the manifest's {entry.sha256[:12]}...")
    return manifest, problems


def _recorded_files(manifest: Manifest):
    yield from manifest.tokenizer
    for component in manifest.components.values():
        yield component
        yield from component.chunks


def json_schema() -> dict:
    """The manifest's JSON Schema, for tools outside Python."""
    return Manifest.model_json_schema()
