"""Evaluator speed on the real SD 2.1-base UNet vs the PyTorch eager forward of the same module.

Builds the UNet from the bundled sd21-base config with seeded random weights, converts it
(float16 compute precision, batch 2, 64x64 latents) to an .mlpackage, frees the conversion, then
times PyTorch forwards and evaluator predictions, interleaved, on the same inputs and reports the
best of each, their ratio and the PSNR between them.

Needs ~10 GB during conversion; run it alone on the machine:

    flock /tmp/sdbuild-bigrun.lock .venv/bin/python bench/evaluator_speed.py [--target iOS16]
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "evaluator"))

from evaluator_builders import build_component, convert, random_inputs, torch_outputs  # noqa: E402
from sdbuild.evaluator import ProgramEvaluator  # noqa: E402
from sdbuild.metrics import psnr  # noqa: E402

TARGET_RATIO = 1.5


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="sd21-base")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--target", default="iOS16", help="deployment target of the conversion")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (best kept)")
    args = parser.parse_args()

    module, interface = build_component(args.arch, "unet", latent=args.latent, batch=args.batch)
    inputs = random_inputs(interface, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "unet.mlpackage"
        model, convert_s = _timed(lambda: convert(module, interface, target=args.target))
        model.save(str(package))
        del model
        gc.collect()
        print(f"converted {args.arch} unet ({args.target}) in {convert_s:.1f} s", flush=True)

        evaluator, load_s = _timed(lambda: ProgramEvaluator(package))
        print(f"evaluator load: {load_s:.1f} s, {len(evaluator._steps)} runtime ops", flush=True)
        # Interleaved runs, best of each: other processes on a shared machine affect both alike.
        torch_runs, eval_runs = [], []
        for _ in range(args.repeats):
            reference, seconds = _timed(lambda: torch_outputs(module, interface, inputs))
            torch_runs.append(seconds)
            ours, seconds = _timed(lambda: evaluator.predict(inputs))
            eval_runs.append(seconds)
            print(f"  pytorch {torch_runs[-1]:.2f} s, evaluator {eval_runs[-1]:.2f} s", flush=True)
        torch_s, eval_s = min(torch_runs), min(eval_runs)
        del evaluator
        gc.collect()
        device_eval = ProgramEvaluator(package, fp16_storage=True)
        device_out, device_s = _timed(lambda: device_eval.predict(inputs))

    ratio = eval_s / torch_s
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"pytorch eager forward (best):  {torch_s:7.2f} s")
    print(f"evaluator predict (best):      {eval_s:7.2f} s  ratio {ratio:.2f}x "
          f"(target <= {TARGET_RATIO}x)")
    print(f"evaluator predict (fp16 storage, first call): {device_s:7.2f} s")
    print(f"PSNR vs pytorch: float32 {psnr(reference['noise_pred'], ours['noise_pred']):.1f} dB, "
          f"fp16 storage {psnr(reference['noise_pred'], device_out['noise_pred']):.1f} dB")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
