"""Byte-identical ``.mlpackage`` output, and content digests of packages and files.

coremltools leaves three things in a saved package that change from run to run although the model
does not: random UUIDs as the item identifiers of ``Manifest.json``, today's date in the model
metadata (``com.github.apple.coremltools.conversion_date``), and protobuf maps (metadata, MIL op
inputs and attributes) serialized in no fixed order. Here the identifiers become name-based UUIDs
of each item's path, the date is dropped (or set from ``SOURCE_DATE_EPOCH``, as a UTC date), and
the spec is serialized deterministically. ``weight.bin`` needs nothing: the MIL blob writer lays
the program's constants out in program order with zeroed reserved fields, so the same program
gives the same bytes.

``Manifest.json`` is written exactly as coremltools' own ModelPackage library serializes it
(4-space indent, sorted keys, final newline), because that library rewrites the manifest every
time it opens a package, ``ct.models.MLModel(path)`` included: any other layout would make merely
loading a package change its bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from sdbuild.errors import SdbuildError

if TYPE_CHECKING:
    import coremltools as ct

CONVERSION_DATE_KEY = "com.github.apple.coremltools.conversion_date"
PACKAGE_MANIFEST_FILE = "Manifest.json"  # inside a .mlpackage; the build's own is manifest.MANIFEST_FILE
PACKAGE_SUFFIX = ".mlpackage"

# Fixed namespace for the manifest's item identifiers: uuid5(namespace, item path) is the same
# on every machine and run, and distinct per item within a package.
_ITEM_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "sdbuild.mlpackage.item")
_FILE_MODE = 0o644
_HASH_CHUNK = 1 << 20


def save_package(model: "ct.models.MLModel", dest: Path, *, metadata: dict[str, str] | None = None) -> None:
    """Save an ML program as a deterministic ``.mlpackage`` at ``dest``, atomically.

    The package is written and normalized in a temporary sibling of ``dest`` and renamed into
    place only when complete; an existing ``dest`` stays untouched until then. ``metadata`` adds
    user-defined key/values to the model description.
    """
    dest = Path(dest)
    if dest.suffix != PACKAGE_SUFFIX:
        raise SdbuildError(f"cannot save a Core ML package as '{dest}'", f"name it with the {PACKAGE_SUFFIX} suffix")
    if not model.is_package:
        raise SdbuildError(
            "the model is a neural network, not an ML program, so it has no .mlpackage form",
            "convert it with convert_to='mlprogram'",
        )
    with staging_path(dest) as staged:
        model.save(str(staged))
        _normalize(staged, metadata or {})
        replace_path(staged, dest)


def normalize_package(path: Path) -> None:
    """Make an existing package deterministic in place (e.g. one from ``ct.models.utils.bisect_model``).

    Each rewritten file is replaced by rename, so a file hard-linked elsewhere (a cache entry) is
    never written through.
    """
    _normalize(Path(path), {})


def package_digest(path: Path) -> str:
    """sha256 of a plain file's bytes, or of a directory's sorted (relative path, file sha256) pairs."""
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    if not path.is_dir():
        raise SdbuildError(f"cannot hash '{path}': no such file or directory", "check the path")
    listing = hashlib.sha256()
    for relative, digest in file_digests(path).items():
        listing.update(f"{relative}\0{digest}\n".encode())
    return listing.hexdigest()


def file_size(path: Path) -> int:
    """Bytes of a plain file, or of every file under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def file_digests(path: Path) -> dict[str, str]:
    """Relative POSIX path -> sha256 of every file under ``path`` (a plain file maps its own name)."""
    path = Path(path)
    if path.is_file():
        return {path.name: _file_sha256(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {p.relative_to(path).as_posix(): _file_sha256(p) for p in files}


@contextmanager
def staging_path(dest: Path) -> Iterator[Path]:
    """A fresh, not yet existing path beside ``dest`` (same filesystem, same suffix) to build in.

    Whatever is left there when the block ends (an error, or nothing was moved away) is removed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial"))
    try:
        yield holder / dest.name
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def replace_path(staged: Path, dest: Path) -> None:
    """Move the complete ``staged`` file or folder to ``dest``, replacing what was there.

    The old ``dest`` is renamed aside first and deleted only after the new one is in place, so
    ``dest`` is at every moment either the old or the new content, never a mix.
    """
    if not os.path.lexists(dest):
        os.replace(staged, dest)
        return
    retired = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
    try:
        os.replace(dest, retired / dest.name)
        try:
            os.replace(staged, dest)
        except BaseException:
            os.replace(retired / dest.name, dest)
            raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def source_date() -> str | None:
    """The UTC date of ``SOURCE_DATE_EPOCH`` (reproducible-builds convention), or None when unset."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return None
    try:
        seconds = int(raw)
    except ValueError:
        raise SdbuildError(
            f"SOURCE_DATE_EPOCH='{raw}' is not a whole number of seconds",
            "set it to a Unix timestamp such as $(git log -1 --format=%ct), or unset it",
        ) from None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).date().isoformat()


def _normalize(package: Path, metadata: dict[str, str]) -> None:
    manifest = _read_manifest(package)
    _rewrite_spec(package / "Data" / _root_item_path(package, manifest), metadata)
    _write_atomically(package / PACKAGE_MANIFEST_FILE, _manifest_bytes(_with_derived_identifiers(manifest)))


def _read_manifest(package: Path) -> dict:
    manifest_path = package / PACKAGE_MANIFEST_FILE
    if not manifest_path.is_file():
        raise SdbuildError(f"'{package}' is not a Core ML package: it has no {PACKAGE_MANIFEST_FILE}",
                           f"pass a {PACKAGE_SUFFIX} folder saved by coremltools")
    try:
        return json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SdbuildError(f"{manifest_path} is not valid JSON ({error})",
                           "the package is damaged: save or convert it again") from None


def _root_item_path(package: Path, manifest: dict) -> str:
    entries = manifest.get("itemInfoEntries", {})
    root = entries.get(manifest.get("rootModelIdentifier", ""))
    if root is None or "path" not in root:
        raise SdbuildError(f"{package / PACKAGE_MANIFEST_FILE} names no root model",
                           "the package is damaged: save or convert it again")
    return root["path"]


def _with_derived_identifiers(manifest: dict) -> dict:
    """The manifest with each item's random identifier replaced by a uuid5 of its path."""
    entries = manifest.get("itemInfoEntries", {})
    renamed = {old: str(uuid.uuid5(_ITEM_ID_NAMESPACE, item["path"])) for old, item in entries.items()}
    result = dict(manifest)
    result["itemInfoEntries"] = {renamed[old]: item for old, item in entries.items()}
    if "rootModelIdentifier" in manifest:
        result["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    return result


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=4, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _rewrite_spec(spec_path: Path, metadata: dict[str, str]) -> None:
    from sdbuild.quiet import import_coremltools

    ct = import_coremltools()
    spec = ct.proto.Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    user_defined = spec.description.metadata.userDefined
    date = source_date()
    if date is None:
        user_defined.pop(CONVERSION_DATE_KEY, None)
    else:
        user_defined[CONVERSION_DATE_KEY] = date
    for key, value in metadata.items():  # map order is fixed by deterministic serialization
        if not isinstance(key, str) or not isinstance(value, str):
            raise SdbuildError(f"package metadata {key!r}: {value!r} is not a string pair",
                               "Core ML metadata keys and values are strings: convert them with str()")
        user_defined[key] = value
    _write_atomically(spec_path, spec.SerializeToString(deterministic=True))


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 would make the mode differ from coremltools' files
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
