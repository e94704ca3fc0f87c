"""Verification of the compressed sd2-ane UNet against the same UNet uncompressed, at real size.

    flock /tmp/sdbuild-bigrun.lock .venv/bin/python bench/compressed_verify.py [--code DIR]

Builds `sd2-ane components=[unet]` (SPLIT_EINSUM, iOS 17, two chunks) twice from the same
synthetic SD 2.1-base folder, sharing one fresh cache so the conversion runs once:
`quantization=none` first, then the recipe's own 6-bit palettes. Each build verifies the whole
package and its chunk pipeline in sdbuild's evaluator; the table compares the verify stages
(issue 14's target: compressed verification no slower than uncompressed). Each build is its own
child process, measured as in build_speed.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from build_speed import ensure_snapshot, measured_run, stage_lines  # noqa: E402

from sdbuild.progress import format_table  # noqa: E402

VARIANTS = {"uncompressed": ["quantization=none"], "6-bit palettes (recipe)": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", type=Path, help="the diffusers folder both builds read")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose sdbuild builds (default: this one)")
    args = parser.parse_args()
    folder = args.snapshot or Path(tempfile.gettempdir()) / "sdbuild-bench-sd21-base-seed0"
    ensure_snapshot("sd21-base", folder)
    rows, details, verify_seconds = [], [], {}
    with tempfile.TemporaryDirectory(prefix="sdbuild-bench-") as tmp:
        for name, overrides in VARIANTS.items():
            command = [sys.executable, "-m", "sdbuild", "recipe=sd2-ane", "components=[unet]", *overrides,
                       "model.source=local", f"model.path={folder}", f"cache.dir={tmp}/cache", f"output.dir={tmp}/{len(rows)}"]
            print(f"{name}: {' '.join(command[3:])} ...", flush=True)
            wall, cpu, peak, _ = measured_run(command, args.code, {"PYTHONPATH": str(args.code)})
            (info,) = Path(tmp, str(len(rows))).glob("*/*/build-info.json")
            build_info = json.loads(info.read_text())
            verify_seconds[name] = build_info["stage_seconds"]["unet"]["verify"]
            peak_gb = build_info.get("stage_peak_gb", {}).get("unet", {}).get("verify", float("nan"))
            rows.append([name, f"{wall:.1f}", f"{cpu:.1f}", f"{peak:.2f}", f"{verify_seconds[name]:.1f}", f"{peak_gb:.2f}"])
            details += [f"{name}:", *stage_lines(build_info)]
            print(f"  {wall:.1f} s wall, verify {verify_seconds[name]:.1f} s", flush=True)
    print(format_table(["sd2-ane UNet", "wall s", "CPU s", "peak RSS GB", "verify s", "verify GB"], rows))
    print("\n".join(details))
    uncompressed, compressed = verify_seconds.values()
    print(f"\nverification, compressed / uncompressed: {compressed / uncompressed:.2f}x")


if __name__ == "__main__":
    main()
