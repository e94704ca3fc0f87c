"""Committed expectations of a build: what a recipe must keep producing, checked in CI.

`sdbuild expect <build> <file>` compares a build with an expectations file and lists every
difference; `--update` writes the file from the build instead, to commit an intended change.

- Artifact hashes are compared exactly, on the machine architecture the file was written on:
  elsewhere, other float kernels may round the synthetic weights differently (reported, not failed).
- File names, sizes, interfaces and compression are compared exactly everywhere.
- PSNR is compared within a tolerance (evaluator arithmetic follows the BLAS), and values above
  a ceiling count as lossless, since near-identical outputs give PSNRs that are pure noise.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.manifest import ComponentInfo, Manifest
from sdbuild.package_io import replace_path, staging_path

EXPECTATIONS_VERSION = 1
DEFAULT_PSNR_TOLERANCE_DB = 0.5
LOSSLESS_PSNR_DB = 100.0


def expectations_of(manifest: Manifest) -> dict:
    """The expectations a build sets: everything of its artifacts that a regression would change."""
    return {
        "expectations_version": EXPECTATIONS_VERSION,
        "recipe": manifest.recipe.name,
        "source": manifest.source.model_id,
        "machine": platform.machine(),
        "psnr_tolerance_db": DEFAULT_PSNR_TOLERANCE_DB,
        "tokenizer": {f.file: f.sha256 for f in manifest.tokenizer},
        "components": {name: _component(info) for name, info in sorted(manifest.components.items())},
    }


def _component(info: ComponentInfo) -> dict:
    return {
        "file": info.file,
        "sha256": info.sha256,
        "bytes": info.bytes,
        "interface": info.interface.model_dump(),
        "compression": info.compression.model_dump(exclude={"weight_bytes_before"}),
        "chunks": [{"file": c.file, "sha256": c.sha256, "weight_bytes": c.weight_bytes} for c in info.chunks],
        "psnr_db": {o.name: round(o.psnr_db, 2) for o in info.verification.outputs},
        "chunks_psnr_db": None if info.verification.chunks_psnr_db is None else round(info.verification.chunks_psnr_db, 2),
    }


def read_expectations(path: Path) -> dict:
    if not path.is_file():
        raise SdbuildError(f"no expectations file at {path}", f"write one from a good build: sdbuild expect --update <build> {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SdbuildError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})",
                           f"rewrite it: sdbuild expect --update <build> {path}") from exc
    if not isinstance(data, dict) or data.get("expectations_version") != EXPECTATIONS_VERSION:
        raise SdbuildError(f"{path} is not an sdbuild expectations file of version {EXPECTATIONS_VERSION}",
                           f"rewrite it: sdbuild expect --update <build> {path}")
    return data


def write_expectations(manifest: Manifest, path: Path) -> None:
    with staging_path(path) as staged:  # an interrupted write never leaves a truncated file
        staged.write_text(json.dumps(expectations_of(manifest), indent=2, sort_keys=True) + "\n")
        replace_path(staged, path)


def compare(expected: dict, actual: dict) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(differences as (field, expected, actual), notes) between expectations and those of a
    build (``expectations_of(manifest)``). No differences means the build meets them."""
    tolerance = float(expected.get("psnr_tolerance_db", DEFAULT_PSNR_TOLERANCE_DB))
    same_machine = expected.get("machine") == actual["machine"]
    notes = [] if same_machine else [
        f"hashes not compared: expectations were written on {expected.get('machine')}, this is {actual['machine']}"]
    skipped = {"expectations_version", "machine", "psnr_tolerance_db"}
    want = {k: v for k, v in _flatten(expected).items() if k.split(".")[0] not in skipped}
    got = {k: v for k, v in _flatten(actual).items() if k.split(".")[0] not in skipped}
    differences = []
    for field in sorted(want.keys() | got.keys()):
        a, b = want.get(field, "absent"), got.get(field, "absent")
        if field.endswith("sha256") and not same_machine:
            continue
        if _is_psnr(field) and isinstance(a, float) and isinstance(b, float):
            if abs(min(a, LOSSLESS_PSNR_DB) - min(b, LOSSLESS_PSNR_DB)) <= tolerance:
                continue
        elif a == b:
            continue
        differences.append((field, str(a), str(b)))
    return differences, notes


def _is_psnr(field: str) -> bool:
    return ".psnr_db." in field or field.endswith("psnr_db")


def _flatten(data, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": [1]}} -> {"a.b.0": 1}; dotted paths name fields in the difference table."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return {prefix: data}
    flat: dict[str, object] = {}
    for key, value in items:
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
