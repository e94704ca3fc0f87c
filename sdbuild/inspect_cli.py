"""Subcommands on finished builds and the cache: `verify`, `diff`, `expect`, `bundle`, `cache`,
`mixed-bit`."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.manifest import BuildCheck, Manifest, check_build, read_manifest
from sdbuild.progress import format_table


def verify_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sdbuild verify", description="Recompute every hash of a build and check its manifest.")
    parser.add_argument("build_dir", type=Path)
    args = parser.parse_args(argv)
    if _print_mismatches(check_build(args.build_dir)):
        return 1
    print(f"{args.build_dir}: ok, every file matches the manifest")
    return 0


def _print_mismatches(check: BuildCheck) -> bool:
    """List what differs between a build's files and its manifest; True if anything does."""
    if check.problems:
        print(f"{check.build_dir}: {len(check.problems)} mismatch(es)")
        for problem in check.problems:
            print(f"  {problem}")
    return bool(check.problems)


def _interface_summary(component) -> str:
    interface = component.interface
    digest = hashlib.sha256(interface.model_dump_json().encode()).hexdigest()[:8]
    return f"{len(interface.inputs)} in, {len(interface.outputs)} out #{digest}"


def _min_psnr(component) -> str:
    values = [o.psnr_db for o in component.verification.outputs]
    return f"{min(values):.1f}" if values else "not verified"


COMPONENT_FIELDS = (
    ("sha256", lambda c: c.sha256[:12]),
    ("MB", lambda c: f"{c.bytes / 1e6:.2f}"),
    ("compression", lambda c: f"{c.compression.mode} {c.compression.avg_bits_per_weight:.2f}b"),
    ("chunks", lambda c: str(len(c.chunks))),
    ("min PSNR dB", _min_psnr),
    ("interface", _interface_summary),
)
BUILD_FIELDS = ("build_id", "attention", "deployment_target", "compute_units", "latent_size", "batch_size")


def diff_rows(a: Manifest, b: Manifest) -> list[list[str]]:
    """Rows of (component, field, value in a, value in b, "differs" or "")."""
    rows = [[field, "", str(getattr(a, field)), str(getattr(b, field))] for field in BUILD_FIELDS]
    rows.append(["source", "", a.source.model_id, b.source.model_id])
    for name in sorted(set(a.components) | set(b.components)):
        ca, cb = a.components.get(name), b.components.get(name)
        for label, show in COMPONENT_FIELDS:
            rows.append([name, label, show(ca) if ca else "absent", show(cb) if cb else "absent"])
    return [[*row, "" if row[2] == row[3] else "differs"] for row in rows]


def diff_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sdbuild diff", description="Compare two builds.")
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    rows = diff_rows(read_manifest(args.a), read_manifest(args.b))
    print(format_table(["component", "field", str(args.a), str(args.b), ""], rows))
    return 0 if all(not r[-1] for r in rows) else 1


def expect_main(argv: list[str]) -> int:
    from sdbuild import expectations

    parser = argparse.ArgumentParser(
        prog="sdbuild expect", description="Check a build against committed expectations (or --update them).")
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("expectations", type=Path)
    parser.add_argument("--update", action="store_true", help="write the expectations from this build instead")
    args = parser.parse_args(argv)
    # The gate is on the files themselves: a manifest that still reads well proves nothing.
    check = check_build(args.build_dir)
    if args.update:
        expectations.write_expectations(check.intact().manifest, args.expectations)
        print(f"wrote {args.expectations} from {args.build_dir}")
        return 0
    wanted = expectations.read_expectations(args.expectations)
    damaged = _print_mismatches(check)
    differences, notes = expectations.compare(wanted, expectations.expectations_of(check.manifest))
    for note in notes:
        print(f"note: {note}")
    if differences:
        print(format_table(["field", "expected", "this build"], [list(d) for d in differences]))
        print(f"{len(differences)} difference(s). If the change is intended: "
              f"sdbuild expect --update {args.build_dir} {args.expectations}")
    if damaged or differences:
        return 1
    print(f"{args.build_dir}: meets {args.expectations}")
    return 0


def bundle_main(argv: list[str]) -> int:
    from sdbuild.bundle import bundle

    parser = argparse.ArgumentParser(
        prog="sdbuild bundle",
        description="Compile a build into the Resources/ folder Swift apps load (macOS: needs Xcode's coremlcompiler).")
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="the Resources folder (default: <build_dir>-Resources)")
    args = parser.parse_args(argv)
    out = args.out or args.build_dir.with_name(f"{args.build_dir.name}-Resources")
    plan = bundle(args.build_dir, out)
    print(format_table(["package", "compiled as"], [[file, f"{name}.mlmodelc"] for file, name in plan]))
    print(f"wrote {out}")
    return 0


def cache_main(argv: list[str]) -> int:
    from sdbuild.cache import default_cache_dir
    from sdbuild.cache import BuildCache
    from sdbuild.cache.report import format_entries, format_pruned

    parser = argparse.ArgumentParser(prog="sdbuild cache", description="List or prune the stage cache.")
    parser.add_argument("action", choices=["list", "prune"])
    parser.add_argument("--dir", type=Path, default=None, help="cache folder (default: the user cache directory)")
    parser.add_argument("--older-than-days", type=float, default=None)
    parser.add_argument("--max-gb", type=float, default=None, help="keep the most recently used entries within this size")
    args = parser.parse_args(argv)
    root = args.dir or default_cache_dir()
    if not root.exists():  # looking must not create it
        print(f"no cache at {root}")
        return 0
    cache = BuildCache(root)
    if args.action == "list":
        print(format_entries(cache.entries()))
        return 0
    if args.older_than_days is None and args.max_gb is None:
        raise SdbuildError("cache prune needs a budget", "pass --older-than-days N and/or --max-gb N")
    pruned = cache.prune(
        older_than_s=None if args.older_than_days is None else args.older_than_days * 86400,
        max_bytes=None if args.max_gb is None else int(args.max_gb * 1e9),
    )
    print(format_pruned(pruned))
    return 0


def mixed_bit_main(argv: list[str]) -> int:
    from sdbuild.mixed_bit.cli import main as mixed_bit

    return mixed_bit(argv)
