"""Quantization presets on the real SD 2.1-base UNet: MB, average bits, PSNR vs float16, seconds.

Converts the UNet of the bundled sd21-base config with seeded random weights once (iOS18 opset,
so every preset applies; batch 1, 64x64 latents), then compresses it with each preset, measures
the weight file and the output PSNR against the float16 package (both run in sdbuild's ML
Program evaluator on the same seeded inputs), and cuts the kmeans6 result in two chunks (the
sd2-ane recipe's iOS layout). With --mixed-bit it also runs the mixed-bit pre-analysis (at a
reduced latent size) and builds its 4.5-bit recipe.

Caveat: random weights are not trained weights. Their value distributions (and so k-means
errors and layer sensitivities) differ from a real checkpoint's; read the PSNR column as a
relative ranking of presets, not as the quality a real model keeps.

Needs ~12 GB at the conversion; run it alone on the machine:

    flock /tmp/sdbuild-bigrun.lock .venv/bin/python bench/compression_presets.py [--mixed-bit]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdbuild.quiet import silence_progress_bars  # noqa: E402

silence_progress_bars()

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sdbuild.config.compression import ChunkingConfig, QuantizationConfig  # noqa: E402
from sdbuild.config.schema import ModelConfig, SourceKind  # noqa: E402
from sdbuild.contract import component_interface  # noqa: E402
from sdbuild.metrics import psnr  # noqa: E402
from sdbuild.models import build_component_module  # noqa: E402
from sdbuild.package_io import save_package  # noqa: E402
from sdbuild.progress import format_table  # noqa: E402
from sdbuild.quiet import import_coremltools  # noqa: E402
from sdbuild.sample_inputs import sample_inputs  # noqa: E402
from sdbuild.sources import load_submodel, resolve_source  # noqa: E402
from sdbuild.config.layer_plan import layer_plan_of  # noqa: E402
from sdbuild.stages.chunk import chunk  # noqa: E402
from sdbuild.stages.compress import compress  # noqa: E402
from sdbuild.stages.convert import convert_module  # noqa: E402
from sdbuild.stages.verify import chunked_outputs, load_backend, lowest_psnr  # noqa: E402

PRESETS = ("linear8", "kmeans8", "kmeans6", "kmeans4", "kmeans2", "kmeans1", "grouped_kmeans4", "blockwise_int4")
TARGET = "iOS18"
MIB = 2**20


def preset(name: str) -> QuantizationConfig:
    path = ROOT / "conf" / "quantization" / f"{name}.yaml"
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QuantizationConfig), OmegaConf.load(path)))


def evaluate(package: Path, inputs: dict) -> dict:
    from sdbuild.evaluator import ProgramEvaluator

    return ProgramEvaluator(package, fp16_storage=True).predict(inputs)


def weight_mb(package: Path) -> float:
    return (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size / MIB


def convert_unet(source, interface, work: Path) -> Path:
    started = time.perf_counter()
    module = build_component_module("unet", {"unet": load_submodel(source, "unet")}, source.arch, "SPLIT_EINSUM")
    model = convert_module(module, interface, precision="float16", target=TARGET)
    path = work / "float16.mlpackage"
    save_package(model, path)
    del model, module
    gc.collect()
    print(f"converted in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    return path


def mixed_bit_preset(source, work: Path) -> QuantizationConfig:
    from sdbuild.mixed_bit.analysis import AnalysisSettings, analyse
    from sdbuild.mixed_bit.layer_plan import choose_layer_plan, write_layer_plan

    settings = AnalysisSettings(num_inputs=1, latent_size=16)
    unet = load_submodel(source, "unet")
    analysis = analyse(unet, settings, identity=source.digest, cache_dir=work / "mixed-bit-cache",
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    plan = choose_layer_plan(analysis, 4.5)
    path = write_layer_plan(plan, work, "sd21-base-random")
    print(f"mixed-bit layer plan: {plan.avg_bits:.2f} bits, min layer PSNR {plan.min_layer_psnr_db:.1f} dB",
          file=sys.stderr, flush=True)
    return QuantizationConfig(mode="mixed_bit", mixed_bit_recipe=str(path), components=["unet"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--mixed-bit", action="store_true", help="also analyse and apply a 4.5-bit mixed-bit recipe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, help="keep packages here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ct = import_coremltools()

    source = resolve_source(ModelConfig(source=SourceKind.synthetic, architecture="sd21-base", seed=0))
    interface = component_interface("unet", source.arch, (64, 64), 1)
    inputs = sample_inputs(interface, seed=1234)
    with tempfile.TemporaryDirectory(prefix="sdbuild-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        float_package = convert_unet(source, interface, work)
        started = time.perf_counter()
        reference = evaluate(float_package, inputs)["noise_pred"]
        print(f"float16 evaluated in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
        rows = [["float16", f"{weight_mb(float_package):.1f}", "16.00", "-", "-"]]

        configs = {name: preset(name) for name in args.presets}
        if args.mixed_bit:
            configs["mixed_bit 4.5"] = mixed_bit_preset(source, work)
        for name, cfg in configs.items():
            started = time.perf_counter()
            model = ct.models.MLModel(str(float_package), skip_model_load=True)
            result, report = compress(model, cfg, "unet", TARGET, layer_plan_of(cfg))
            path = work / f"{name.replace(' ', '_')}.mlpackage"
            save_package(result, path)
            seconds = time.perf_counter() - started
            del model, result
            gc.collect()
            quality = psnr(reference, evaluate(path, inputs)["noise_pred"])
            rows.append([name, f"{weight_mb(path):.1f}", f"{report.avg_bits_per_weight:.2f}", f"{quality:.1f}",
                         f"{seconds:.0f}"])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)

        print(format_table(["preset", "weights MB", "avg bits", "PSNR dB vs float16", "compress s"], rows))
        kmeans6 = work / "kmeans6.mlpackage"
        if kmeans6.exists():
            started = time.perf_counter()
            chunks = chunk(kmeans6, ChunkingConfig(enabled=True), work / "chunks", "synthetic/sd21-base", "unet")
            seconds = time.perf_counter() - started
            chunk_psnr = lowest_psnr(load_backend("evaluator", kmeans6).predict(inputs),
                                     chunked_outputs(work / "chunks", chunks, inputs))
            sizes = ", ".join(f"{c.weight_bytes / MIB:.1f}" for c in chunks)
            print(f"\nkmeans6 in 2 chunks: {sizes} MB of weights, chunk1->chunk2 vs whole {chunk_psnr:.1f} dB, "
                  f"{seconds:.0f}s")


if __name__ == "__main__":
    main()
