"""The build manifest: everything a runner needs to use a build, and nothing that varies by run.

`manifest.json` is validated against this schema on write and on read. It holds no clocks, hosts
or timings, so two builds of the same recipe from the same source write identical manifests;
those go to `build-info.json` beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from sdbuild.errors import SdbuildError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
BUILD_INFO_FILE = "build-info.json"
# What a build folder holds besides the files its manifest lists: its own records, and the
# folder settings Finder writes into any folder a Mac user opens.
BUILD_RECORDS = (MANIFEST_FILE, BUILD_INFO_FILE)
FINDER_SETTINGS = ".DS_Store"


def _inside_build(file: str) -> str:
    """A manifest path names a file of its build: relative, normalised, POSIX, so that joining it
    to the build folder can neither leave the folder nor name one file two ways."""
    problem = (
        "is empty" if not file
        else "contains a control character" if any(ord(c) < 32 for c in file)
        else "contains a backslash" if "\\" in file
        else "is absolute" if file.startswith("/")
        else "has an empty, '.' or '..' segment" if {"", ".", ".."} & set(file.split("/"))
        else None
    )
    if problem:
        raise ValueError(f"file {file!r} {problem}: manifest paths are relative to the build folder, "
                         "'/'-separated and normalised")
    return file


BuildPath = Annotated[str, AfterValidator(_inside_build)]


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
    file: BuildPath
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
    latent_scaling_factor: float  # of the VAE the build ships (a recipe's replacement VAE: its own)
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
    # What the recipe added to the source's weights (LoRA, VAE, embeddings, ControlNet): each
    # one's kind and identity (file digests, scale), in the order they were applied.
    additions: list[dict] = []


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
        # A validator's own sentence reads better without pydantic's "Value error, " prefix.
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        raise SdbuildError(f"{path} does not match the manifest schema: {where}: {message}", "rebuild the recipe") from exc


@dataclass(frozen=True)
class BuildCheck:
    """A build's manifest, every mismatch between it and the files on disk, and the resolved path
    each listed file was hashed at: whoever loads the files loads these, not a second lookup."""

    build_dir: Path
    manifest: Manifest
    problems: list[str]
    paths: dict[str, Path]  # manifest `file` -> the resolved path whose content was hashed

    def intact(self) -> BuildCheck:
        """This check, or SdbuildError naming the first mismatches."""
        if not self.problems:
            return self
        more = len(self.problems) - 3
        listed = "; ".join(self.problems[:3]) + (f"; and {more} more" if more > 0 else "")
        raise SdbuildError(f"{self.build_dir} does not match its manifest: {listed}",
                           f"the files were changed or damaged; list them with `sdbuild verify {self.build_dir}`, "
                           "or rebuild the recipe")


def check_build(build_dir: Path) -> BuildCheck:
    """Rehash every file the manifest lists and look for files it does not list."""
    from sdbuild.package_io import package_digest

    manifest = read_manifest(build_dir)
    root = Path(build_dir).resolve()
    problems: list[str] = []
    paths: dict[str, Path] = {}
    for entry in recorded_files(manifest):
        path = root / entry.file
        if not path.exists():
            problems.append(f"{entry.file}: missing")
        elif escaping := _links_out_of(root, path):
            problems.append(f"{entry.file}: {escaping.relative_to(root).as_posix()} links outside the build folder")
        elif (digest := package_digest(resolved := path.resolve())) != entry.sha256:
            problems.append(f"{entry.file}: sha256 {digest[:12]}... does not match the manifest's {entry.sha256[:12]}...")
        else:
            paths[entry.file] = resolved
    listed = [entry.file for entry in recorded_files(manifest)]
    problems += [f"{file}: not listed in the manifest" for file in _unlisted_files(root, listed)]
    return BuildCheck(Path(build_dir), manifest, problems, paths)


def _links_out_of(root: Path, path: Path) -> Path | None:
    """The first of ``path`` (or a file in a package folder) that resolves outside ``root``."""
    candidates = [path, *(sorted(path.rglob("*")) if path.is_dir() else [])]
    return next((p for p in candidates if not p.resolve().is_relative_to(root)), None)


def _unlisted_files(root: Path, listed: list[str]) -> list[str]:
    """Files in the build that are neither listed (a package folder lists all it holds) nor the
    build's own records."""
    unlisted = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if (path.is_dir() and not path.is_symlink()) or relative in BUILD_RECORDS or path.name == FINDER_SETTINGS:
            continue
        if not any(relative == file or relative.startswith(file + "/") for file in listed):
            unlisted.append(relative)
    return unlisted


def recorded_files(manifest: Manifest):
    yield from manifest.tokenizer
    for component in manifest.components.values():
        yield component
        yield from component.chunks


def json_schema() -> dict:
    """The manifest's JSON Schema, for tools outside Python."""
    return Manifest.model_json_schema()
