"""Cold build, a second clean build, warm rebuild and a 4-preset quantization sweep.

    flock /tmp/sdbuild-bigrun.lock .venv/bin/python bench/build_cache.py [--recipe sd2-base] \
        [--parts cache sweep cold-presets]

Each build runs as its own `python -m sdbuild` process under /usr/bin/time, so wall time and
peak memory are per build. The cold build fills a fresh cache; the second clean build runs with
the cache off, in another time zone and folder, and must match the cold build file by file (as
must the warm rebuild). Prints a table and the conversion and compression counts of the sweep
(the target: one conversion per component plus one compression per preset and component).
`cold-presets` builds each preset cold, on its own empty cache, as the sweep's baseline, and
checks that each matches the sweep's build of that preset file by file.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdbuild.package_io import file_digests  # noqa: E402
from sdbuild.progress import format_table  # noqa: E402

PRESETS = ("kmeans4", "kmeans6", "kmeans8", "linear8")


def timed_build(overrides: list[str], env_extra: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS GB, stderr) of one sdbuild process."""
    command = ["/usr/bin/time", "-f", "TIME %e %M", sys.executable, "-m", "sdbuild", *overrides]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env_extra or {})})
    if result.returncode != 0:
        raise SystemExit(f"build failed: {' '.join(overrides)}\n{result.stderr[-3000:]}")
    wall, peak_kb = re.findall(r"^TIME ([\d.]+) (\d+)$", result.stderr, re.M)[-1]
    return float(wall), int(peak_kb) / 1e6, result.stderr


def count(stderr: str, stage: str) -> int:
    return len(re.findall(rf"\] \S+\s+{stage}\s+done in", stderr))


def build_files(build: Path) -> dict[str, str]:
    """Digest of every file of a build, except the clock-bearing build-info.json."""
    return {name: digest for name, digest in file_digests(build).items() if name != "build-info.json"}


def builds_in(output_dir: str) -> dict[str, Path]:
    """Build id -> build folder, for every build under output_dir."""
    return {p.name: p for p in Path(output_dir).glob("*/*")
            if p.is_dir() and not p.name.startswith(".") and not p.parent.name.startswith(".")}  # not .sweeps/


def only_build(output_dir: str) -> Path:
    (build,) = builds_in(output_dir).values()
    return build


def compare(label: str, reference: Path, other: Path) -> None:
    a, b = build_files(reference), build_files(other)
    differing = sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))
    verdict = "identical" if not differing else f"{len(differing)} files differ: {', '.join(differing[:10])}"
    print(f"{label}: {len(a)} files, {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="sd2-base")
    parser.add_argument("--parts", nargs="+", default=["cache", "sweep"], choices=["cache", "sweep", "cold-presets"],
                        help="cache: cold, second clean and warm builds; sweep: the 4-preset multirun; "
                             "cold-presets: each preset built cold on its own (the sweep's baseline)")
    args = parser.parse_args()
    source = [f"recipe={args.recipe}", "model.source=synthetic"]
    # Seeded random weights lose more to 4-bit palettes than trained ones (27 dB on the real
    # SD 2.1-base UNet), so preset builds gate at 15 dB: they measure cost, not quality.
    low_gate = "min_psnr.default=15"
    rows: list[list] = []

    def run(label: str, overrides: list[str], env: dict[str, str] | None = None) -> float:
        wall, peak, stderr = timed_build(overrides, env)
        rows.append([label, f"{wall:.1f}", f"{peak:.2f}", count(stderr, "convert"), count(stderr, "compress")])
        return wall

    with tempfile.TemporaryDirectory(prefix="sdbuild-bench-") as tmp:
        comparisons = []
        if "cache" in args.parts:
            cached = [*source, f"cache.dir={tmp}/cache"]
            cold = run("cold build", [*cached, f"output.dir={tmp}/cold"])
            run("second clean build (no cache, TZ=Asia/Tokyo)", [*source, "cache.enabled=false", f"output.dir={tmp}/clean"],
                {"TZ": "Asia/Tokyo"})
            warm = run("warm rebuild", [*cached, f"output.dir={tmp}/warm"])
            comparisons += [("second clean build vs cold", only_build(f"{tmp}/cold"), only_build(f"{tmp}/clean")),
                            ("warm rebuild vs cold", only_build(f"{tmp}/cold"), only_build(f"{tmp}/warm"))]
        if "sweep" in args.parts:
            # The sweep starts from an empty cache of its own, as a fresh machine would.
            sweep = run(f"sweep {len(PRESETS)} presets", ["-m", *source, f"cache.dir={tmp}/sweep-cache",
                                                          f"output.dir={tmp}/sweep", f"quantization={','.join(PRESETS)}", low_gate])
        if "cold-presets" in args.parts:
            cold_presets = sum(run(f"cold {preset}", [*source, f"cache.dir={tmp}/cache-{preset}", f"output.dir={tmp}/cold-presets",
                                                      f"quantization={preset}", low_gate]) for preset in PRESETS)
            if "sweep" in args.parts:
                swept = builds_in(f"{tmp}/sweep")
                comparisons += [(f"cold preset build {build_id} vs the sweep's", build, swept[build_id])
                                for build_id, build in builds_in(f"{tmp}/cold-presets").items()]
        print(format_table(["run", "seconds", "peak GB", "conversions", "compressions"], rows))
        for label, reference, other in comparisons:
            compare(label, reference, other)
        if "cache" in args.parts:
            print(f"\nwarm / cold = {100 * warm / cold:.1f}%")
        if "sweep" in args.parts and "cold-presets" in args.parts:
            print(f"sweep vs {len(PRESETS)} cold builds: {sweep:.0f} s vs {cold_presets:.0f} s ({100 * sweep / cold_presets:.0f}%)")


if __name__ == "__main__":
    main()
