"""Subcommands about recipes rather than builds: `validate`, `ls`, `schema`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.progress import format_table


def validate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sdbuild validate",
        description="Compose and check a recipe; print the resolved config, the plan and the build id. Writes nothing.",
    )
    parser.add_argument("overrides", nargs="*", help="as for a build: recipe=NAME group=option key=value")
    args = parser.parse_args(argv)
    import yaml

    from sdbuild.api import validated_spec
    from sdbuild.plan import plan_jobs

    spec = validated_spec(args.overrides)
    print(yaml.safe_dump(spec.config, sort_keys=False).rstrip())
    print()
    rows = [[job.name, job.file_name, job.precision, job.attention or "-",
             spec.quantization.mode if job.compress else "none", "yes" if job.chunk else "no",
             f"{job.min_psnr:g}" if spec.verify else "off"]
            for job in plan_jobs(spec)]
    print(format_table(["component", "file", "precision", "attention", "compression", "chunked", "min PSNR"], rows))
    print()
    print(f"build id: {spec.build_id}")
    print(f"output:   {spec.output_dir}")
    return 0


def ls_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sdbuild ls", description="Recipes and every config group's options.")
    parser.parse_args(argv)
    from sdbuild.catalog import catalog
    from sdbuild.config.search_path import recipe_dirs

    for group, options in catalog(recipe_dirs()).items():
        print(f"{group}  ({group}=NAME)")
        width = max(len(o.name) for o in options)
        for option in options:
            print(f"  {option.name:<{width}}  {option.description}")
        print()
    return 0


def schema_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sdbuild schema",
                                     description="The JSON Schema of manifest.json, for apps that read builds.")
    parser.add_argument("--out", type=Path, help="write it to this file (default: print it)")
    args = parser.parse_args(argv)
    text = manifest_schema_text()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    if not args.out.parent.is_dir():
        raise SdbuildError(f"folder {args.out.parent} does not exist", "create it, or pass another --out")
    # Written aside and moved into place: a reader never sees half a schema.
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, args.out)
    print(f"wrote {args.out}")
    return 0


def manifest_schema_text() -> str:
    from sdbuild.manifest import json_schema

    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
