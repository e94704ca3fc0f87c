"""Fixtures: the tiny SD 2.x UNet converted by sdbuild's own pipeline, once per run.

Conversion takes most of a minute, so the packages live in the suite's shared stage cache, keyed
by the source, the target and the code that shapes the conversion (a change to it re-converts).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pytest

from sdbuild.quiet import silence_progress_bars

silence_progress_bars()

ROOT = Path(__file__).resolve().parents[2]
ARCH = "tiny-sd21-base"
LATENT = (16, 16)
BATCH = 1  # one item keeps the evaluator fast; the graph is the same as with two
# The tiny model's layers are small: compress everything over 512 weights so presets show.
TEST_WEIGHT_THRESHOLD = 512


@pytest.fixture(scope="session")
def tiny_source():
    from sdbuild.config.schema import ModelConfig, SourceKind
    from sdbuild.sources import resolve_source

    return resolve_source(ModelConfig(source=SourceKind.synthetic, architecture=ARCH, seed=0))


@pytest.fixture(scope="session")
def tiny_interface(tiny_source):
    from sdbuild.contract import component_interface

    return component_interface("unet", tiny_source.arch, LATENT, BATCH)


@pytest.fixture(scope="session")
def tiny_inputs(tiny_interface):
    from sdbuild.sample_inputs import sample_inputs

    return sample_inputs(tiny_interface, seed=7)


def _converted_unet(target: str, source, interface, cache_dir: Path) -> Path:
    from sdbuild.cache import BuildCache
    from sdbuild.models import build_component_module
    from sdbuild.package_io import save_package
    from sdbuild.sources import load_submodel
    from sdbuild.stages.convert import convert_module
    from sdbuild.versions import tool_versions

    def create(folder: Path) -> dict:
        module = build_component_module("unet", {"unet": load_submodel(source, "unet")}, source.arch, "ORIGINAL")
        model = convert_module(module, interface, precision="float16", target=target)
        save_package(model, folder / "unet.mlpackage")
        return {"target": target}

    cache = BuildCache(cache_dir)
    # tool_versions holds the digest of sdbuild's code, so an edited model never reuses a stale UNet.
    key = cache.key("test_tiny_unet", {"source": source.identity(), "target": target, "interface": interface.as_dict(),
                                       "tools": tool_versions()})
    entry, _ = cache.get_or_create(key, create)
    return entry / "unet.mlpackage"


@pytest.fixture(scope="session")
def unet_ios16(tiny_source, tiny_interface, shared_cache_dir) -> Path:
    """Float16 tiny UNet, ML Program opset iOS16 (read-only: copy before changing)."""
    return _converted_unet("iOS16", tiny_source, tiny_interface, shared_cache_dir)


@pytest.fixture(scope="session")
def unet_ios18(tiny_source, tiny_interface, shared_cache_dir) -> Path:
    """Float16 tiny UNet, opset iOS18 (grouped palettes and int4 blocks need it)."""
    return _converted_unet("iOS18", tiny_source, tiny_interface, shared_cache_dir)


@pytest.fixture(scope="session")
def compressed(tmp_path_factory):
    """compressed(package, cfg, target) -> (saved package, report), each combination once."""
    from sdbuild.package_io import save_package
    from sdbuild.quiet import import_coremltools
    from sdbuild.config.layer_plan import layer_plan_of
    from sdbuild.stages.compress import compress

    ct = import_coremltools()
    root = tmp_path_factory.mktemp("compressed")
    done: dict[str, tuple[Path, object]] = {}

    def get(package: Path, cfg, target: str):
        key = hashlib.sha256(repr((str(package), cfg, target)).encode()).hexdigest()[:16]
        if key not in done:
            model = ct.models.MLModel(str(package), skip_model_load=True)
            result, report = compress(model, cfg, "unet", target, layer_plan_of(cfg))
            path = root / key / "unet.mlpackage"
            save_package(result, path)
            done[key] = (path, report)
        return done[key]

    return get


@functools.lru_cache(maxsize=32)
def program_summary(package: Path) -> tuple[tuple, dict[str, int], dict[str, int]]:
    """(weight tensors, op count by type, rank by op name) of a saved package, loaded once."""
    from collections import Counter

    from sdbuild.mlprogram import load_program, weight_tensors

    prog = load_program(package)
    ops = list(prog.functions["main"].operations)
    return (tuple(weight_tensors(prog)), dict(Counter(op.op_type for op in ops)),
            {op.name: len(op.outputs[0].shape or ()) for op in ops})


def assert_recipe_applied(recipe: dict[str, int], package: Path) -> int:
    """Every recipe layer's weight has the recipe's bit width (16: not compressed); returns how
    many layers were palettized."""
    weights = {w.name: w for w in program_summary(package)[0]}
    applied = 0
    for layer, nbits in recipe.items():
        name = layer.replace(".", "_") + "_weight_to_fp16"
        if nbits == 16:
            assert not weights[name].compressed, layer
        else:
            assert weights[name + "_palettized"].element_bits == nbits, layer
            applied += 1
    return applied
