"""Real-size SD 1.5 with two LoRAs fused: a build from ONE original-layout checkpoint file against
the same build from a diffusers folder (same synthetic weights, same LoRAs). Each build runs in
its own process with the stage cache off; its wall time and peak RSS are that process's. The
file route's time includes converting the file into a diffusers folder (a fresh cache.dir each).

    flock /tmp/sdbuild-bigrun.lock .venv/bin/python bench/lora_single_file.py \\
        [--work /tmp/lora-bench] [--components text_encoder unet] [--verify]

Writes (once, reused): sd15.safetensors (~4.3 GB), the sd15 diffusers folder, two rank-4 LoRAs
(kohya with LoCon convolutions, PEFT). Needs ~15 GB of free memory for the UNet's conversion.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCHITECTURE, SEED = "sd15", 0


def prepare(work: Path) -> dict[str, Path]:
    from sdbuild.sources import write_synthetic_snapshot
    from sdbuild.sources.synthetic_file import write_synthetic_single_file
    from sdbuild.sources.synthetic_lora import write_synthetic_lora

    paths = {"file": work / "sd15.safetensors", "folder": work / "sd15-folder",
             "kohya": work / "sd15-kohya.safetensors", "peft": work / "sd15-peft.safetensors"}
    if not paths["folder"].is_dir():
        write_synthetic_snapshot(ARCHITECTURE, SEED, paths["folder"])
    if not paths["file"].is_file():
        write_synthetic_single_file(ARCHITECTURE, SEED, paths["file"])
    for fmt in ("kohya", "peft"):
        if not paths[fmt].is_file():
            write_synthetic_lora(ARCHITECTURE, SEED, fmt, paths[fmt])
    return paths


def build_overrides(route: str, paths: dict[str, Path], components: list[str], verify: bool, out: Path) -> list[str]:
    source = (["model.source=file", f"model.path={paths['file']}", f"model.tokenizer={paths['folder']}"]
              if route == "file" else ["model.source=local", f"model.path={paths['folder']}"])
    return [
        "model=sd15", *source, "model.id=sd15", f"components=[{','.join(components)}]",
        f"loras=[{{path: {paths['kohya']}, scale: 0.8}}, {{path: {paths['peft']}, scale: 0.5}}]",
        "cache.enabled=false", f"cache.dir={out / 'cache'}", f"output.dir={out / 'builds'}",
        f"verify={str(verify).lower()}", "--quiet",
    ]


def run_one(overrides: list[str]) -> dict:
    """One build in this process: wall time and this process's peak RSS."""
    from sdbuild.cli import main

    start = time.perf_counter()
    code = main(overrides)
    return {"exit": code, "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sdbuild-lora-bench")
    parser.add_argument("--components", nargs="+", default=["text_encoder", "unet"])
    parser.add_argument("--verify", action="store_true", help="also verify (runs the evaluator on each package)")
    parser.add_argument("--one", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    paths = prepare(args.work)
    print(json.dumps({"prepare_s": round(time.perf_counter() - start, 1)}), flush=True)
    for route in ("file", "folder"):
        with tempfile.TemporaryDirectory(dir=args.work) as out:
            overrides = build_overrides(route, paths, args.components, args.verify, Path(out))
            result = subprocess.run([sys.executable, __file__, "--one", *overrides],
                                    capture_output=True, text=True, check=False)
            row = json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else \
                {"exit": result.returncode, "stderr": result.stderr[-2000:]}
            print(json.dumps({"route": route, "components": args.components, "verify": args.verify, **row}), flush=True)


if __name__ == "__main__":
    main()
