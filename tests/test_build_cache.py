"""Incremental builds: each stage is reused when nothing it depends on changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdbuild.cache import BuildCache
from sdbuild.cli import main
from sdbuild.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_conversion(monkeypatch):
    """Any attempt to load weights or convert fails the build."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a stage that should have come from the cache ran")

    from sdbuild.stages import convert, load

    monkeypatch.setattr(load, "load_component", forbidden)
    monkeypatch.setattr(convert, "convert_module", forbidden)


def only_build(out: Path) -> Path:
    (build,) = [p for p in out.glob("*/*") if not p.name.startswith(".")]
    return build


def test_unchanged_rebuild_converts_nothing(tiny_build, shared_cache_dir, tmp_path, no_conversion, capsys):
    assert main([f"output.dir={tmp_path}", f"cache.dir={shared_cache_dir}"]) == 0
    rebuilt = only_build(tmp_path)
    assert (rebuilt / "manifest.json").read_bytes() == (tiny_build / "manifest.json").read_bytes()
    assert "convert   cached" in capsys.readouterr().err


def test_unchanged_rebuild_imports_no_torch_or_coremltools(tiny_build, shared_cache_dir, tmp_path):
    """Most of a warm rebuild's time would be imports: it needs neither library."""
    script = ("import sys; from sdbuild.cli import main; "
              f"code = main(['output.dir={tmp_path}', 'cache.dir={shared_cache_dir}']); "
              "print(code, sorted(m for m in ('torch', 'coremltools', 'diffusers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.split("\n")[-2] == "0 []", result.stdout[-2000:] + result.stderr[-2000:]


def test_compute_unit_hint_rebuilds_nothing(tiny_build, shared_cache_dir, tmp_path, no_conversion):
    assert main([f"output.dir={tmp_path}", f"cache.dir={shared_cache_dir}", "target.compute_units=CPU_AND_NE"]) == 0
    rebuilt = read_manifest(only_build(tmp_path))
    original = read_manifest(tiny_build)
    assert rebuilt.compute_units == "CPU_AND_NE" and rebuilt.build_id != original.build_id
    for name, info in rebuilt.components.items():
        assert info.sha256 == original.components[name].sha256


def test_quantization_change_reuses_the_float16_conversion(tiny_build, shared_cache_dir, tmp_path, no_conversion):
    assert main([f"output.dir={tmp_path}", f"cache.dir={shared_cache_dir}", "quantization=linear8",
                 "components=[text_encoder,unet]"]) == 0
    manifest = read_manifest(only_build(tmp_path))
    original = read_manifest(tiny_build)
    for name in ("text_encoder", "unet"):
        info = manifest.components[name]
        assert info.compression.mode == "linear8"
        assert info.compression.weight_bytes_after < info.compression.weight_bytes_before
        assert info.sha256 != original.components[name].sha256


def test_edited_mixed_bit_recipe_file_recompresses(tiny_build, shared_cache_dir, tmp_path, no_conversion):
    """The compress key and the build id hold the recipe file's content, not just its path."""
    recipe = tmp_path / "layers.json"
    layers = json.loads((ROOT / "conf/quantization/mixed_bit_recipes/tiny-sd21-base_4.00.json").read_text())
    recipe.write_text(json.dumps(layers))
    overrides = [f"cache.dir={shared_cache_dir}", "components=[unet]", "quantization=mixed_bit",
                 f"quantization.mixed_bit_recipe={recipe}", "verify=false"]
    assert main([f"output.dir={tmp_path / 'first'}", *overrides]) == 0
    recipe.write_text(json.dumps({layer: 2 for layer in layers}))
    assert main([f"output.dir={tmp_path / 'edited'}", *overrides]) == 0
    first, edited = (read_manifest(only_build(tmp_path / run)) for run in ("first", "edited"))
    assert edited.build_id != first.build_id
    assert edited.components["unet"].sha256 != first.components["unet"].sha256
    assert edited.components["unet"].compression.weight_bytes_after < first.components["unet"].compression.weight_bytes_after


def test_corrupt_cache_entry_is_detected_and_rebuilt(tiny_build, shared_cache_dir, tmp_path):
    cache_copy = tmp_path / "cache"
    shutil.copytree(shared_cache_dir, cache_copy)
    cache = BuildCache(cache_copy)
    convert_entries = [e for e in cache.entries() if e.stage == "convert" and e.meta.get("component") == "vae_encoder"]
    assert convert_entries, "the tiny build cached its conversions"
    for entry in convert_entries:
        weights = next(entry.path.rglob("weight.bin"))
        weights.chmod(0o644)
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    with pytest.warns(Warning, match="corrupt|mismatch|damaged"):
        assert main([f"output.dir={tmp_path / 'out'}", f"cache.dir={cache_copy}"]) == 0
    rebuilt = only_build(tmp_path / "out")
    assert (rebuilt / "manifest.json").read_bytes() == (tiny_build / "manifest.json").read_bytes()


def test_concurrent_builders_share_a_cache_safely(tmp_path):
    cache_dir = tmp_path / "cache"
    command = [sys.executable, "-m", "sdbuild", f"cache.dir={cache_dir}", "components=[text_encoder,vae_decoder]"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    runs = [
        subprocess.Popen([*command, f"output.dir={tmp_path / f'out{i}'}"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = [(run.wait(timeout=900), run.stderr.read()) for run in runs]
    for code, err in results:
        assert code == 0, err[-2000:]
    first, second = only_build(tmp_path / "out0"), only_build(tmp_path / "out1")
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    conversions = sum(err.count("convert   done") for _, err in results)
    assert conversions == 2, "each component converted once, by one of the two builders"
    cache = BuildCache(cache_dir)
    for entry in cache.entries():
        assert cache.get(entry.key) is not None, f"entry {entry.key} is corrupt"
    assert json.loads((first / "manifest.json").read_text())["build_id"] == first.name


def test_source_date_epoch_reaches_a_warm_cache_build(tiny_build, shared_cache_dir, tmp_path, monkeypatch):
    """The date is written into the package, so it is part of the convert key and the build id:
    a cache filled without it must not hand back an undated package."""
    from sdbuild.quiet import import_coremltools

    overrides = [f"cache.dir={shared_cache_dir}", "components=[text_encoder]", "verify=false"]
    assert main([f"output.dir={tmp_path / 'undated'}", *overrides]) == 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14 UTC
    assert main([f"output.dir={tmp_path / 'dated'}", *overrides]) == 0
    build = only_build(tmp_path / "dated")
    assert build.name != only_build(tmp_path / "undated").name, "the date is part of the build id"
    ct = import_coremltools()
    (package,) = build.glob("*.mlpackage")
    metadata = ct.models.MLModel(str(package), skip_model_load=True).get_spec().description.metadata.userDefined
    assert metadata["com.github.apple.coremltools.conversion_date"] == "2023-11-14"


def test_verification_reruns_where_more_backends_run(tiny_build, shared_cache_dir, tmp_path, monkeypatch, capsys):
    """A Mac sharing a cache filled on Linux still runs Core ML: the verify key holds the backends."""
    from sdbuild.stages import verify

    real_load = verify.load_backend
    ran_coreml = []

    def load_backend(name, package, decoded=None):
        if name == "coreml":  # Core ML runs only on macOS: the evaluator stands in for it
            ran_coreml.append(package)
            return real_load("evaluator", package, decoded)
        return real_load(name, package, decoded)

    monkeypatch.setattr(verify, "available_backends", lambda: ("coreml", "evaluator"))
    monkeypatch.setattr(verify, "load_backend", load_backend)
    assert main([f"output.dir={tmp_path}", f"cache.dir={shared_cache_dir}", "components=[vae_decoder]"]) == 0
    assert len(ran_coreml) == 1, "the Linux verification entry was reused"
    verification = read_manifest(only_build(tmp_path)).components["vae_decoder"].verification
    assert verification.backend == "coreml+evaluator"
    assert "verify    cached" not in capsys.readouterr().err
