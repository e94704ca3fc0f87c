"""One sweep, several Hydra launchers: wall time, peak memory, conversions and compressions.

    .venv/bin/python bench/sweep_launchers.py [--recipe sd2-base] [--launchers basic joblib]
        [--sweep quantization=kmeans4,kmeans6,kmeans8,linear8]

Each launcher runs the same sweep (`python -m sdbuild -m ...`) on its own empty stage cache and
output folder. Peak memory is the largest sum of resident memory over the sweep's whole process
tree (launcher workers and every variant's build), sampled every 0.2 s. Conversions and
compressions are counted from the variants' build logs: with a shared cache each component is
converted once, whatever the launcher. Joblib runs 2 workers; `ray` starts a local Ray cluster.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from build_cache import count  # noqa: E402

from sdbuild.progress import format_table  # noqa: E402
from sdbuild.sweep.variant import LOG_FILE  # noqa: E402

LAUNCHER_OVERRIDES = {"joblib": ["hydra.launcher.n_jobs=2"]}


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_sweep(launcher: str, recipe: str, sweep: list[str], work: Path) -> dict:
    command = [sys.executable, "-m", "sdbuild", "-m", f"recipe={recipe}", f"launcher={launcher}", *sweep,
               *LAUNCHER_OVERRIDES.get(launcher, []), "model.source=synthetic",
               f"output.dir={work / 'out'}", f"cache.dir={work / 'cache'}", f"hydra.sweep.dir={work / 'sweep'}"]
    log = work / "sweep.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        sweep_process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        watched, peak = psutil.Process(sweep_process.pid), 0
        while sweep_process.poll() is None:
            peak = max(peak, tree_rss(watched))
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    text = log.read_text()
    if sweep_process.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed (exit {sweep_process.returncode}):\n{text[-3000:]}")
    # Each variant's job keeps its build's log, whatever the launcher does with stdout (submitit
    # writes it to files of its own).
    builds = "".join(p.read_text() for p in sorted((work / "sweep").glob(f"*/{LOG_FILE}")))
    return {"launcher": launcher, "seconds": seconds, "peak_gb": peak / 1e9,
            "conversions": count(builds, "convert"), "compressions": count(builds, "compress")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="sd2-base")
    parser.add_argument("--launchers", nargs="+", default=["basic", "joblib"])
    parser.add_argument("--sweep", nargs="+", default=["quantization=kmeans4,kmeans6,kmeans8,linear8"])
    args = parser.parse_args()
    rows = []
    for launcher in args.launchers:
        with tempfile.TemporaryDirectory(prefix=f"sdbuild-bench-{launcher}-") as work:
            print(f"{launcher}: sweeping {' '.join(args.sweep)} on {args.recipe} ...", flush=True)
            row = run_sweep(launcher, args.recipe, args.sweep, Path(work))
            rows.append(row)
            print(f"{launcher}: {row['seconds']:.1f}s", flush=True)
    print(format_table(
        ["launcher", "wall s", "peak GB (process tree)", "conversions", "compressions"],
        [[r["launcher"], f"{r['seconds']:.1f}", f"{r['peak_gb']:.2f}", str(r["conversions"]), str(r["compressions"])]
         for r in rows],
    ))


if __name__ == "__main__":
    main()
