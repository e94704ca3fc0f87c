"""Wall time and peak memory of a verified real-size build, against plain diffusers trace+convert.

    flock /tmp/sdbuild-bigrun.lock .venv/bin/python bench/build_speed.py \
        [--recipe sd2-base] [--overrides attention=split_einsum] [--parts yardstick build] [--code DIR]

Both runs read the same synthetic (seeded) weights from one diffusers folder on disk, written
once into --snapshot (default: $TMPDIR/sdbuild-bench-<architecture>-seed0) and reused:
- yardstick: the stock diffusers UNet loaded from the folder, traced and converted to a float16 ML
  Program (what any converter has to do at least once; issue 14 measured Apple's converter at
  about 2.5x it for a whole build);
- build: `python -m sdbuild recipe=<recipe> <overrides>` from the folder with the cache off
  (cold), verification on, its stage seconds read from the build's build-info.json.
Each run is its own child process; its peak memory is the highest sum of the resident memory of
its process tree (polled every 0.1 s) or the largest single process's peak (/usr/bin/time), whichever
is higher. CPU seconds (user + system of the tree) are printed too: on a shared machine they
vary less than wall time. `--code DIR` runs the build from another checkout (e.g. a worktree of main) to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdbuild.progress import format_table  # noqa: E402

YARDSTICK_TARGET = "macOS13"
POLL_SECONDS = 0.1


def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between listing and reading
    return total


def measured_run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak GB, stderr) of ``command`` as a child process tree."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        # /usr/bin/time reports the kernel's own peak of the largest process in the tree, which
        # catches a spike between two polls.
        child = subprocess.Popen(["/usr/bin/time", "-f", "PEAK_KB %M CPU %U %S", *command], cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                 env={**os.environ, **(env or {})})
        peak = 0
        while child.poll() is None:
            peak = max(peak, _tree_rss_bytes(child.pid))
            time.sleep(POLL_SECONDS)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read()
    if child.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{stderr[-3000:]}")
    peak_kb, user, system = re.findall(r"^PEAK_KB (\d+) CPU ([\d.]+) ([\d.]+)$", stderr, re.M)[-1]
    return wall, float(user) + float(system), max(peak, int(peak_kb) * 1024) / 1e9, stderr


def ensure_snapshot(architecture: str, folder: Path) -> None:
    if (folder / "model_index.json").exists():
        return
    print(f"writing the synthetic {architecture} snapshot to {folder} (once)", flush=True)
    code = ("import sys; from pathlib import Path; from sdbuild.sources import write_synthetic_snapshot; "
            "write_synthetic_snapshot(sys.argv[1], 0, Path(sys.argv[2]))")
    partial = folder.with_name(folder.name + ".partial")
    subprocess.run([sys.executable, "-c", code, architecture, str(partial)], cwd=ROOT, check=True)
    partial.rename(folder)


def yardstick(folder: Path) -> None:
    """Child: the stock diffusers UNet from ``folder``, traced and converted to float16."""
    import coremltools as ct
    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_grad_enabled(False)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    config = unet.config
    latent = config.sample_size
    sample = torch.randn(2, config.in_channels, latent, latent, generator=torch.Generator().manual_seed(0))
    timestep = torch.tensor([999.0, 999.0])
    states = torch.randn(2, 77, config.cross_attention_dim, generator=torch.Generator().manual_seed(1))

    class Positional(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, states):
            return self.unet(sample, timestep, states, return_dict=False)[0]

    stamps = {"start": time.perf_counter()}
    traced = torch.jit.trace(Positional(unet).eval(), (sample, timestep, states), check_trace=False)
    stamps["trace"] = time.perf_counter()
    model = ct.convert(
        traced,
        inputs=[ct.TensorType(name=name, shape=tensor.shape, dtype=np.float32)
                for name, tensor in (("sample", sample), ("timestep", timestep), ("encoder_hidden_states", states))],
        outputs=[ct.TensorType(name="noise_pred", dtype=np.float32)],
        convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
        minimum_deployment_target=getattr(ct.target, YARDSTICK_TARGET), skip_model_load=True,
    )
    stamps["convert"] = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model.save(str(Path(tmp) / "unet.mlpackage"))
    stamps["save"] = time.perf_counter()
    print(json.dumps({"trace": round(stamps["trace"] - stamps["start"], 1),
                      "convert": round(stamps["convert"] - stamps["trace"], 1),
                      "save": round(stamps["save"] - stamps["convert"], 1)}), file=sys.stderr)


def stage_lines(build_info: dict) -> list[str]:
    """`component: stage s/GB, ...` per component, from build-info.json's stage_seconds and
    stage_peak_gb (the builder process's resident memory while the stage ran)."""
    peaks = build_info.get("stage_peak_gb", {})  # builds before it was recorded have none
    return [f"  {component}: " + ", ".join(f"{stage} {seconds:.1f} s" + (f"/{peaks[component][stage]:.2f} GB" if stage in peaks.get(component, {}) else "")
                                           for stage, seconds in stages.items())
            for component, stages in build_info["stage_seconds"].items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="sd2-base")
    parser.add_argument("--overrides", nargs="*", default=["attention=split_einsum"])
    parser.add_argument("--architecture", default="sd21-base", help="of the synthetic snapshot (the recipe's)")
    parser.add_argument("--snapshot", type=Path, help="the diffusers folder both runs read")
    parser.add_argument("--parts", nargs="+", default=["yardstick", "build"], choices=["yardstick", "build"])
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose sdbuild builds (default: this one)")
    parser.add_argument("--label", default="", help="names the build row (e.g. main, branch)")
    parser.add_argument("--yardstick-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.yardstick_child:
        yardstick(args.yardstick_child)
        return
    folder = args.snapshot or Path(tempfile.gettempdir()) / f"sdbuild-bench-{args.architecture}-seed0"
    ensure_snapshot(args.architecture, folder)
    rows, details = [], []
    if "yardstick" in args.parts:
        print("yardstick: diffusers UNet trace + convert ...", flush=True)
        wall, cpu, peak, stderr = measured_run([sys.executable, __file__, "--yardstick-child", str(folder)], ROOT)
        rows.append(["diffusers UNet trace+convert (yardstick)", f"{wall:.1f}", f"{cpu:.1f}", f"{peak:.2f}"])
        stages = [line for line in stderr.splitlines() if line.startswith("{")][-1]
        details.append(f"yardstick stages (s): {stages}")
        print(f"  {wall:.1f} s wall, {cpu:.1f} s CPU, {peak:.2f} GB", flush=True)
    if "build" in args.parts:
        overrides = [f"recipe={args.recipe}", *args.overrides, "model.source=local", f"model.path={folder}",
                     "cache.enabled=false"]
        label = f"sdbuild {' '.join([args.recipe, *args.overrides])}, cold, verified" + (f" ({args.label})" if args.label else "")
        print(f"build: {' '.join(overrides)} (code: {args.code}) ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="sdbuild-bench-") as tmp:
            wall, cpu, peak, _ = measured_run([sys.executable, "-m", "sdbuild", *overrides, f"output.dir={tmp}/out"],
                                         args.code, {"PYTHONPATH": str(args.code)})
            (info,) = Path(tmp, "out").glob("*/*/build-info.json")
            build_info = json.loads(info.read_text())
        rows.append([label, f"{wall:.1f}", f"{cpu:.1f}", f"{peak:.2f}"])
        details += [f"build stage seconds ({build_info['seconds']:.1f} s in the builder):", *stage_lines(build_info)]
        print(f"  {wall:.1f} s wall, {cpu:.1f} s CPU, {peak:.2f} GB", flush=True)
    print(format_table(["run", "wall s", "CPU s", "peak RSS GB"], rows))
    print("\n".join(details))
    if len(rows) == 2:
        ratios = [float(b) / float(a) for a, b in zip(rows[0][1:], rows[1][1:])]
        print(f"\nbuild / yardstick: wall {ratios[0]:.2f}x, CPU {ratios[1]:.2f}x, peak {ratios[2]:.2f}x")


if __name__ == "__main__":
    main()
