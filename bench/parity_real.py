"""Real-size parity and conversion cost of sdbuild's component modules.

For each (architecture, attention, component): our module vs the stock diffusers/transformers
module on the same synthetic (seeded) weights and inputs (PSNR, float32), then trace + convert to
a float16 ML Program (seconds) and the row's peak RSS. Each row runs in its own process so the
peak RSS is that row's alone.

Real-size models need many GB of RAM: run them under the machine's big-run lock, e.g.

    flock /tmp/sdbuild-bigrun.lock .venv/bin/python bench/parity_real.py \\
        --archs sd21-base --attentions SPLIT_EINSUM --components unet text_encoder

``--no-convert`` measures parity only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

REAL_ARCHS = ("sd15", "sd21-base", "sd21", "sdxl-base")
ATTENTIONS = ("ORIGINAL", "SPLIT_EINSUM", "SPLIT_EINSUM_V2")
BATCH = 2  # classifier-free guidance, the reference's default


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB


def measure_row(arch_name: str, component: str, attention: str, convert: bool) -> dict:
    import torch

    from sdbuild import contract
    from sdbuild.metrics import psnr
    from sdbuild.contract import submodel_folders
    from sdbuild.models import build_component_module
    from sdbuild.models.reference import reference_outputs
    from sdbuild.sample_inputs import sample_inputs
    from sdbuild.sources import load_submodel
    from sdbuild.sources.synthetic import resolve_synthetic
    from sdbuild.stages.trace import to_tensors, trace_module

    warnings.filterwarnings("ignore", "SPLIT_EINSUM_V2 is not advised")
    source = resolve_synthetic(arch_name, seed=0)
    arch = source.arch
    row = {"arch": arch_name, "attention": attention, "component": component}
    if not arch.supports(component):
        return {**row, "skipped": "not in architecture"}
    start = time.perf_counter()
    submodels = {folder: load_submodel(source, folder) for folder in submodel_folders(component)}
    row["load_s"] = round(time.perf_counter() - start, 1)
    module = build_component_module(component, submodels, arch, attention)
    size = arch.default_latent_size
    interface = contract.component_interface(component, arch, (size, size), BATCH)
    example = sample_inputs(interface)
    inputs = to_tensors(example, interface)
    with torch.no_grad():
        ours = module(*inputs)
        expected = reference_outputs(component, submodels, arch, inputs)
    row["psnr_db"] = round(min(psnr(e.numpy(), o.numpy()) for e, o in zip(expected, ours)), 1)
    del expected, ours
    if convert:
        from sdbuild.stages.convert import convert_module

        precision = contract.vae_precision(arch) if component.startswith("vae") else "float16"
        start = time.perf_counter()
        traced = trace_module(module, interface, example)
        row["trace_s"] = round(time.perf_counter() - start, 1)
        del module, submodels
        start = time.perf_counter()
        convert_module(traced, interface, precision=precision, target="macOS13")
        row["convert_s"] = round(time.perf_counter() - start, 1)
    row["peak_rss_gb"] = round(_peak_rss_gb(), 2)
    return row


def _run_isolated(arch: str, component: str, attention: str, convert: bool) -> dict:
    command = [sys.executable, __file__, "--row", arch, component, attention]
    if not convert:
        command.append("--no-convert")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"arch": arch, "attention": attention, "component": component, "error": tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _print_table(rows: list[dict]) -> None:
    columns = ("arch", "attention", "component", "psnr_db", "load_s", "trace_s", "convert_s",
               "peak_rss_gb", "skipped", "error")
    shown = [c for c in columns if any(c in r for r in rows)]
    print(" | ".join(shown))
    for row in rows:
        print(" | ".join(str(row.get(c, "")) for c in shown))


def main() -> None:
    from sdbuild.archs import list_architectures
    from sdbuild.attention_choice import ATTENTION_COMPONENTS
    from sdbuild.contract import ALL_COMPONENTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(REAL_ARCHS), choices=list_architectures(),
                        help="tiny-* ones need no lock: a quick run of the whole matrix")
    parser.add_argument("--attentions", nargs="+", default=list(ATTENTIONS), choices=ATTENTIONS)
    parser.add_argument("--components", nargs="+", default=list(ALL_COMPONENTS), choices=ALL_COMPONENTS)
    parser.add_argument("--no-convert", action="store_true", help="parity only")
    parser.add_argument("--row", nargs=3, metavar=("ARCH", "COMPONENT", "ATTENTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    convert = not args.no_convert
    if args.row:
        import torch

        torch.set_grad_enabled(False)
        print(json.dumps(measure_row(*args.row, convert=convert)))
        return
    rows = []
    for arch in args.archs:
        for component in args.components:
            # Only the UNet and ControlNet differ by attention; the others are measured once.
            attentions = args.attentions if component in ATTENTION_COMPONENTS else args.attentions[:1]
            for attention in attentions:
                rows.append(_run_isolated(arch, component, attention, convert))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    _print_table(rows)


if __name__ == "__main__":
    main()
