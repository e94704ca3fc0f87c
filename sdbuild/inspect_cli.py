"""Subcommands that inspect builds and the cache: `verify`, `diff`, `cache`, `mixed-bit`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.manifest import Manifest, check_build, read_manifest
from sdbuild.progress import format_table


def verify_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sdbuild verify", description="Recompute every hash of a build and check its manifest.")
    parser.add_argument("build_dir", type=Path)
    args = parser.parse_args(argv)
    _, problems = check_build(args.build_dir)
    if problems:
        print(f"{args.build_dir}: {len(problems)} mismatch(es)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"{args.build_dir}: ok, every file matches the manifest")
    return 0


def diff_rows(a: Manifest, b: Manifest) -> list[list[str]]:
    rows = []
    for field in ("build_id", "attention", "deployment_target", "compute_units", "latent_size", "batch_size"):
        va, vb = getattr(a, field), getattr(b, field)
        rows.append([field, "", str(va), str(vb), "" if va == vb else "differs"])
    rows.append(["source", "", a.source.model_id, b.source.model_id, "" if a.source == b.source else "differs"])
    for name in sorted(set(a.components) | set(b.components)):
        ca, cb = a.components.get(name), b.components.get(name)
        for label, get in (
            ("sha256", lambda c: c.sha256[:12]),
            ("MB", lambda c: f"{c.bytes / 1e6:.2f}"),
            ("compression", lambda c: f"{c.compression.mode} {c.compression.avg_bits_per_weight:.2f}b"),
            ("chunks", lambda c: str(len(c.chunks))),
            ("min PSNR dB", lambda c: f"{min((o.psnr_db for o in c.verification.outputs), default=float('nan')):.1f}"),
            ("interface", lambda c: c.interface.model_dump_json()),
        ):
            va = get(ca) if ca else "absent"
            vb = get(cb) if cb else "absent"
            shown = ("(same)", "(same)") if label == "interface" and va == vb else (va, vb)
            if label == "interface" and va != vb:
                shown = ("(see manifest)", "(see manifest)")
            rows.append([name, label, *shown, "" if va == vb else "differs"])
    return rows


def diff_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sdbuild diff", description="Compare two builds.")
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    rows = diff_rows(read_manifest(args.a), read_manifest(args.b))
    print(format_table(["component", "field", str(args.a), str(args.b), ""], rows))
    return 0 if all(not r[-1] for r in rows) else 1


def cache_main(argv: list[str]) -> int:
    from sdbuild.builder import default_cache_dir
    from sdbuild.cache import BuildCache
    from sdbuild.cache.report import format_entries, format_pruned

    parser = argparse.ArgumentParser(prog="sdbuild cache", description="List or prune the stage cache.")
    parser.add_argument("action", choices=["list", "prune"])
    parser.add_argument("--dir", type=Path, default=None, help="cache folder (default: the user cache directory)")
    parser.add_argument("--older-than-days", type=float, default=None)
    parser.add_argument("--max-gb", type=float, default=None, help="keep the most recently used entries within this size")
    args = parser.parse_args(argv)
    cache = BuildCache(args.dir or default_cache_dir())
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
    from sdbuild.mixed_bit import main as mixed_bit

    return mixed_bit(argv)
