"""`sdbuild bundle`: a build as the `Resources/` folder Swift Core ML Stable Diffusion apps load.

Each package is compiled to `.mlmodelc` by Xcode's `coremlcompiler` (macOS only) and named as the
Swift pipeline expects (`TextEncoder`, `Unet` or `UnetChunk1` + `UnetChunk2`, `VAEDecoder`, ...;
chunks are preferred when a build has both), next to the tokenizer's `vocab.json` and
`merges.txt`. The build is hash-checked first, and the folder is assembled aside and moved into
place only when complete.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from sdbuild.contract import CONTROLNET, RESOURCE_NAMES, component_of
from sdbuild.errors import SdbuildError
from sdbuild.manifest import Manifest, check_build
from sdbuild.package_io import replace_path, staging_path

COMPILER = ("xcrun", "coremlcompiler", "compile")


def resource_plan(manifest: Manifest) -> list[tuple[str, str]]:
    """(package file in the build, compiled model's path in Resources/ without .mlmodelc)."""
    plan = []
    for component, info in sorted(manifest.components.items()):
        if component_of(component) == CONTROLNET:
            plan.append((info.file, f"controlnet/{Path(info.file).stem}"))
        elif info.chunks:
            plan += [(chunk.file, f"{RESOURCE_NAMES[component]}Chunk{i}") for i, chunk in enumerate(info.chunks, 1)]
        else:
            plan.append((info.file, RESOURCE_NAMES[component]))
    return plan


def bundle(build_dir: Path, out_dir: Path, progress=print) -> list[tuple[str, str]]:
    """Compile ``build_dir`` into ``out_dir`` (replaced whole, never left half-written)."""
    if shutil.which(COMPILER[0]) is None:
        raise SdbuildError(
            "compiling .mlmodelc needs Xcode's coremlcompiler (`xcrun`), which only macOS has",
            "copy the build folder to a Mac with the Xcode command line tools and run `sdbuild bundle` there",
        )
    build = check_build(build_dir).intact()
    plan = resource_plan(build.manifest)
    with staging_path(out_dir) as staged:
        staged.mkdir()
        for file, name in plan:
            progress(f"compiling {file} -> {name}.mlmodelc")
            _compile(build.paths[file], staged / f"{name}.mlmodelc")
        for tokenizer_file in build.manifest.tokenizer:
            target = staged / tokenizer_file.file  # SDXL's own second tokenizer: tokenizer_2/
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(build.paths[tokenizer_file.file], target)
        replace_path(staged, out_dir)
    return plan


def _compile(package: Path, compiled: Path) -> None:
    scratch = compiled.parent / f".{compiled.name}.out"
    scratch.mkdir(parents=True)
    result = subprocess.run([*COMPILER, str(package), str(scratch)], capture_output=True, text=True)
    made = scratch / f"{package.stem}.mlmodelc"
    if result.returncode != 0 or not made.is_dir():
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SdbuildError(f"coremlcompiler failed on {package.name}: {detail[0]}",
                           "check that Xcode's version supports the build's deployment target")
    made.rename(compiled)
    scratch.rmdir()
