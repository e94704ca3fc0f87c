"""Evaluator speed on real-size SD 2.1-base components, as ratios measured in one run.

1. Speed: the sd21-base UNet (seeded synthetic weights, batch 2, 64x64 latents) converted as
   sd2-ane converts it (float16, SPLIT_EINSUM, iOS17; --attention/--target change it).
   PyTorch eager (the same float32 module) vs the evaluator in float16-storage mode, the mode
   the verify stage runs: seconds per UNet call, interleaved, best of --repeats, and their ratio.
2. Verification: the text encoder and the UNet as sd2-ane builds them (SPLIT_EINSUM, iOS17, the
   UNet cut in two chunks), float16 and kmeans6-palettized: seconds of what the verify stage
   runs on each (the package in the evaluator, then the chunk pipeline), and the ratio
   palettized / float16 (the target is <= 1).

Packages are built once into --work-dir and reused by later runs, so that another checkout's
evaluator times the very same packages (SDBUILD_ROOT picks the checkout whose sdbuild runs):

    SDBUILD_ROOT=/tmp/main-eval nice .venv/bin/python bench/evaluator_speed.py --work-dir /tmp/evalbench
    nice .venv/bin/python bench/evaluator_speed.py --work-dir /tmp/evalbench

Needs ~10 GB while converting the UNet (the first run) and ~8 GB after; run it alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(os.environ.get("SDBUILD_ROOT", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(ROOT))

from sdbuild.quiet import silence_progress_bars  # noqa: E402

silence_progress_bars()

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sdbuild.config.compression import ChunkingConfig, QuantizationConfig  # noqa: E402
from sdbuild.config.schema import ModelConfig, SourceKind  # noqa: E402
from sdbuild.contract import component_interface, submodel_folders  # noqa: E402
from sdbuild.manifest import ChunkInfo  # noqa: E402
from sdbuild.metrics import psnr  # noqa: E402
from sdbuild.models import build_component_module  # noqa: E402
from sdbuild.package_io import save_package  # noqa: E402
from sdbuild.progress import format_table  # noqa: E402
from sdbuild.quiet import import_coremltools  # noqa: E402
from sdbuild.sample_inputs import sample_inputs  # noqa: E402
from sdbuild.sources import load_submodel, resolve_source  # noqa: E402
from sdbuild.stages.chunk import chunk  # noqa: E402
from sdbuild.stages.compress import compress  # noqa: E402
from sdbuild.stages.convert import convert_module  # noqa: E402
from sdbuild.stages.trace import reference_outputs  # noqa: E402
from sdbuild.stages.verify import chunked_outputs, run_backends  # noqa: E402

SPEED_TARGET = 1.5  # evaluator / PyTorch eager
ANE_TARGET = "iOS17"  # sd2-ane's deployment target
BATCH, LATENT = 2, (64, 64)


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _module(source, component: str, attention: str) -> torch.nn.Module:
    submodels = {folder: load_submodel(source, folder) for folder in submodel_folders(component)}
    return build_component_module(component, submodels, source.arch, attention).eval()


def _package(path: Path, make) -> Path:
    """``path``, made by ``make()`` (an MLModel) unless an earlier run left it."""
    if not path.exists():
        model, seconds = _timed(make)
        save_package(model, path)
        del model
        gc.collect()
        _log(f"built {path.name} in {seconds:.0f} s")
    return path


def _chunks(package: Path, folder: Path) -> list[ChunkInfo]:
    listing = folder / "chunks.json"
    if not listing.exists():
        infos = chunk(package, ChunkingConfig(enabled=True), folder, "synthetic/sd21-base", "unet")
        listing.write_text(json.dumps([c.model_dump() for c in infos]))
    return [ChunkInfo.model_validate(c) for c in json.loads(listing.read_text())]


def _kmeans6() -> QuantizationConfig:
    path = ROOT / "conf" / "quantization" / "kmeans6.yaml"
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QuantizationConfig), OmegaConf.load(path)))


def _verification(package: Path, chunks: tuple[Path, list[ChunkInfo]] | None, inputs: dict) -> dict:
    """What the verify stage runs: the package in the evaluator, then its chunk pipeline."""
    try:  # one DecodedWeights for the package and its chunks, as the verify stage shares it
        from sdbuild.evaluator import DecodedWeights

        shared = {"decoded": DecodedWeights()}
    except ImportError:  # a checkout from before DecodedWeights
        shared = {}
    outputs = run_backends(package, inputs, ("evaluator",), **shared)["evaluator"]
    if chunks is not None:
        chunked_outputs(*chunks, inputs, **shared)
    return outputs


def speed(source, work: Path, attention: str, target: str, repeats: int) -> list[list[str]]:
    interface = component_interface("unet", source.arch, LATENT, BATCH)
    module = _module(source, "unet", attention)
    package = _package(work / f"unet-{attention}-{target}-float16.mlpackage",
                       lambda: convert_module(module, interface, precision="float16", target=target))
    from sdbuild.evaluator import ProgramEvaluator

    evaluator, load_s = _timed(lambda: ProgramEvaluator(package, fp16_storage=True))
    inputs = sample_inputs(interface, seed=1)
    # Interleaved, best of each: other processes on a shared machine slow both alike.
    torch_runs, eval_runs = [], []
    for _ in range(repeats):
        reference, seconds = _timed(lambda: reference_outputs(module, interface, inputs))
        torch_runs.append(seconds)
        ours, seconds = _timed(lambda: evaluator.predict(inputs))
        eval_runs.append(seconds)
        _log(f"  pytorch {torch_runs[-1]:.2f} s, evaluator {eval_runs[-1]:.2f} s")
    quality = psnr(reference["noise_pred"], ours["noise_pred"])
    del evaluator, module
    gc.collect()
    ratio = min(eval_runs) / min(torch_runs)
    return [[f"UNet {attention} {target}, s per call", f"{min(torch_runs):.2f}", f"{min(eval_runs):.2f}",
             f"{ratio:.2f}x (target <= {SPEED_TARGET}x)",
             f"evaluator load {load_s:.1f} s, PSNR vs pytorch {quality:.1f} dB"]]


def verification(source, work: Path, components: list[str]) -> list[list[str]]:
    rows = []
    attention = "SPLIT_EINSUM"
    for component in components:
        interface = component_interface(component, source.arch, LATENT, BATCH)
        ct = import_coremltools()

        def float16():
            return convert_module(_module(source, component, attention), interface, precision="float16",
                                  target=ANE_TARGET)

        # The speed part's UNet when it was converted as sd2-ane converts it.
        plain = _package(work / f"{component}-{attention}-{ANE_TARGET}-float16.mlpackage", float16)
        palettized = _package(work / f"{component}-{attention}-{ANE_TARGET}-kmeans6.mlpackage", lambda: compress(
            ct.models.MLModel(str(plain), skip_model_load=True), _kmeans6(), component, ANE_TARGET)[0])
        chunked = component == "unet"
        inputs = sample_inputs(interface, seed=1)
        seconds = {}
        for name, package in (("float16", plain), ("kmeans6", palettized)):
            chunks = (work / f"{package.stem}-chunks", _chunks(package, work / f"{package.stem}-chunks")) \
                if chunked else None
            _, seconds[name] = _timed(lambda: _verification(package, chunks, inputs))
            gc.collect()
            _log(f"  verify {component} {name}: {seconds[name]:.1f} s")
        rows.append([f"{component} verification{' (+2 chunks)' if chunked else ''}, s",
                     f"{seconds['float16']:.1f}", f"{seconds['kmeans6']:.1f}",
                     f"{seconds['kmeans6'] / seconds['float16']:.2f}x (target <= 1x)", "float16 | kmeans6"])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attention", default="SPLIT_EINSUM", choices=["ORIGINAL", "SPLIT_EINSUM"])
    parser.add_argument("--target", default=ANE_TARGET, help="deployment target of the speed UNet")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls of each (the best is kept)")
    parser.add_argument("--skip", choices=["speed", "verification"], help="leave one part out")
    parser.add_argument("--verify", nargs="+", default=["text_encoder", "unet"], choices=["text_encoder", "unet"],
                        help="components whose verification is timed")
    parser.add_argument("--work-dir", type=Path, help="keep packages here for later runs (default: temporary)")
    args = parser.parse_args()

    source = resolve_source(ModelConfig(source=SourceKind.synthetic, architecture="sd21-base", seed=0))
    with tempfile.TemporaryDirectory(prefix="sdbuild-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        if args.skip != "speed":
            rows += speed(source, work, args.attention, args.target, args.repeats)
        if args.skip != "verification":
            rows += verification(source, work, args.verify)
    print(f"sdbuild from {ROOT}, torch threads {torch.get_num_threads()}, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")
    print(format_table(["measure", "pytorch | float16", "evaluator | kmeans6", "ratio", "note"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
