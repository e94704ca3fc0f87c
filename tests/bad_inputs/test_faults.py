"""The bad-input corpus: bad recipes, paths, environment, sources and runner options, each a
table row (input, exit status, words of the one-line message), and faults (kill -9 at several
stages, SIGTERM, Ctrl-C, two builders on one cache, a full disk). After every case nothing is
left behind: no build folder, no staging, no temp file, every cache entry sound."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from bad_inputs_helpers import (SMALL_BUILD, ROOT, assert_cache_sound, assert_nothing_left, assert_one_line_error,
                      interrupt_at, published_builds, run_cli, staging_left)
from sdbuild.cli import main
from sdbuild.interrupts import Terminated, interruptible
from sdbuild.manifest import check_build
from sdbuild.progress import StageTimer
from sdbuild.runner.cli import main as runner_main
from sdbuild.sources import write_synthetic_snapshot
from sdbuild.stages.store import PARTIAL, remove_abandoned_staging

# ---------------------------------------------------------------------------------------------
# Recipe files: a folder on Hydra's search path holds broken recipes (`recipe=<name>`).

BROKEN_RECIPES = {
    "bad_syntax": "# @package _global_\nname: bad\ncomponents: [unet\nfoo: : bar\n",
    "bad_key": "# @package _global_\nname: bad\nlatnt:\n  height: 64\n",
    "bad_nested_key": "# @package _global_\nname: bad\nlatent:\n  hieght: 64\n",
    "bad_group": "# @package _global_\ndefaults:\n  - override /attenton: original\nname: bad\n",
    "bad_type": "# @package _global_\nname: bad\nbatch_size: two\n",
    "bad_lora_scale": "# @package _global_\nname: bad\nloras:\n  - path: style.safetensors\n    scale: strong\n",
}

RECIPE_CASES = [
    ("bad_syntax", ["bad_syntax.yaml, line 4, column 4", "expected ',' or ']'"]),
    ("bad_key", ["bad_key.yaml, line 3, column 1", "unknown key 'latnt'", "did you mean 'latent'?"]),
    ("bad_nested_key", ["line 4, column 3", "unknown key 'latent.hieght'", "did you mean 'latent.height'?"]),
    ("bad_group", ["bad_group.yaml", "'override /attenton'", "did you mean 'attention'?"]),
    ("bad_type", ["bad_type.yaml, line 3, column 1", "batch_size", "'two'"]),
    ("bad_lora_scale", ["bad_lora_scale.yaml, line 5, column 5", "loras[0].scale", "'strong'", "Float"]),
]


@pytest.fixture
def recipe_dir(tmp_path):
    folder = tmp_path / "conf" / "recipe"
    folder.mkdir(parents=True)
    for name, text in BROKEN_RECIPES.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder.parent


@pytest.mark.parametrize("recipe, words", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_broken_recipe_file_names_file_line_and_key(recipe, words, sweep, recipe_dir, workspace, capsys):
    args = [f"hydra.searchpath=[file://{recipe_dir}]", f"recipe={recipe}", *workspace.build_args()]
    assert main(["-m", *args] if sweep else args) == 2
    assert_one_line_error(capsys.readouterr().err, *words)
    assert not workspace.out.exists(), "a rejected recipe (or sweep) leaves no folder"


# ---------------------------------------------------------------------------------------------
# Command lines refused before any work: (overrides, words of the message).

FILE_IN_THE_WAY = "a-file"
COMMAND_LINE_CASES = [
    ("typo_key", ["attenton=original"], ["unknown key 'attenton'", "did you mean 'attention'?"]),
    ("typo_option", ["attention=orignal"], ["attention=orignal: no such option", "did you mean 'original'?"]),
    ("typo_nested", ["latent.hieght=64"], ["unknown key 'latent.hieght'", "did you mean 'latent.height'?"]),
    ("empty_output_dir", ["output.dir="], ["output.dir is empty"]),
    ("output_dir_is_file", [f"output.dir={{tmp}}/{FILE_IN_THE_WAY}"], ["output.dir", "is a file"]),
    ("output_dir_under_file", [f"output.dir={{tmp}}/{FILE_IN_THE_WAY}/builds"], ["output.dir", "is a file"]),
    ("cache_dir_is_file", [f"cache.dir={{tmp}}/{FILE_IN_THE_WAY}"], ["cache.dir", "is a file"]),
    ("chunking_without_unet", ["chunking=two_chunks", "components=[vae_decoder]"],
     ["chunking is on", "no component to chunk", "chunking=none"]),
    ("sweep_bad_option", ["-m", "attention=original,bogus"],
     ["sweep variant 2 of 2 (attention=bogus)", "no such option"]),
    ("sweep_bad_latent", ["-m", "latent.height=64,60", "latent.width=64"],
     ["sweep variant 2 of 2 (latent.height=60)", "not a positive multiple of 8"]),
    ("sweep_bad_syntax", ["-m", "attention=["], ["attention=["]),
]


@pytest.mark.parametrize("overrides, words", [c[1:] for c in COMMAND_LINE_CASES], ids=[c[0] for c in COMMAND_LINE_CASES])
def test_bad_command_line_fails_in_one_line_and_writes_nothing(overrides, words, workspace, capsys, monkeypatch):
    workspace.root.joinpath(FILE_IN_THE_WAY).write_text("not a folder")
    monkeypatch.chdir(workspace.root)  # an empty output.dir would build here
    overrides = [o.replace("{tmp}", str(workspace.root)) for o in overrides]
    placement = [a for a in workspace.build_args() if a.split("=")[0] not in {o.split("=")[0] for o in overrides}]
    assert main([*overrides, *placement]) == 2
    assert_one_line_error(capsys.readouterr().err, *words)
    assert sorted(p.name for p in workspace.root.iterdir()) == [FILE_IN_THE_WAY], "nothing was created"


def test_source_date_epoch_not_an_integer(workspace, capsys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert main([*SMALL_BUILD, *workspace.build_args()]) == 2
    assert_one_line_error(capsys.readouterr().err, "SOURCE_DATE_EPOCH='yesterday'", "Unix timestamp")
    assert_nothing_left(workspace)


# ---------------------------------------------------------------------------------------------
# Damaged sources: the build starts, fails at loading in one line, and leaves nothing.


def _nan_weights(folder):
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["decoder.conv_in.weight"].view(-1)[0] = float("nan")
    save_file(tensors, weights)


def _inf_weights(folder):
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["decoder.conv_in.bias"][1] = float("-inf")
    save_file(tensors, weights)


def _truncated_pickle(folder):
    """A legacy (non-zip) pickle cut short: the unpickler itself fails (EOFError)."""
    safetensors = folder / "text_encoder" / "model.safetensors"
    weights = load_file(safetensors)
    safetensors.unlink()
    pickle = folder / "text_encoder" / "pytorch_model.bin"
    torch.save(weights, pickle, _use_new_zipfile_serialization=False)
    pickle.write_bytes(pickle.read_bytes()[:64])


def _garbage_pickle(folder):
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle")


SOURCE_CASES = [
    ("nan_weights", _nan_weights, "vae_decoder", ["decoder.conv_in.weight", "contains NaN"]),
    ("inf_weights", _inf_weights, "vae_decoder", ["decoder.conv_in.bias", "contains Inf"]),
    ("truncated_pickle", _truncated_pickle, "text_encoder", ["could not load text_encoder", "pytorch_model.bin"]),
    ("garbage_pickle", _garbage_pickle, "vae_decoder", ["could not load vae", "diffusion_pytorch_model.bin"]),
]


@pytest.fixture(scope="module")
def good_snapshot(tmp_path_factory):
    return write_synthetic_snapshot("tiny-sd21-base", 0, tmp_path_factory.mktemp("snapshot") / "model")


@pytest.mark.parametrize("damage, component, words", [c[1:] for c in SOURCE_CASES], ids=[c[0] for c in SOURCE_CASES])
def test_damaged_weights_fail_in_one_line(damage, component, words, good_snapshot, workspace, capsys):
    model = shutil.copytree(good_snapshot, workspace.root / "model")
    damage(model)
    args = ["model.source=local", f"model.path={model}", "model.allow_pickle=true", f"components=[{component}]"]
    assert main([*args, *workspace.build_args()]) == 2
    assert_one_line_error(capsys.readouterr().err, *words)
    assert_nothing_left(workspace)


# ---------------------------------------------------------------------------------------------
# Subcommands


def test_cache_list_on_a_missing_folder_creates_nothing(workspace, capsys):
    assert main(["cache", "list", "--dir", str(workspace.cache)]) == 0
    assert "no cache at" in capsys.readouterr().out
    assert not workspace.cache.exists()


@pytest.mark.parametrize("targets", [["0"], ["4", "17"], ["nan"], ["0.5"]])
def test_mixed_bit_impossible_targets_refused_before_the_analysis(targets, workspace, capsys):
    args = ["mixed-bit", "--architecture", "tiny-sd21-base", "--targets", *targets,
            "--out-dir", str(workspace.out), "--cache-dir", str(workspace.cache)]
    assert main(args) == 2
    assert_one_line_error(capsys.readouterr().err, "is not a reachable average", "--targets")
    assert not workspace.out.exists() and not workspace.cache.exists(), "no analysis ran"


def test_cache_prune_removes_staging_of_dead_processes_only(workspace, dead_pid, capsys):
    from sdbuild.folders import owner_tag

    staging = workspace.cache / "staging"
    staging.mkdir(parents=True)
    host = owner_tag().rpartition("-")[0]
    dead = staging / f"{host}-{dead_pid}-abc"
    live = staging / f"{owner_tag()}-def"
    for folder in (dead, live):
        (folder / "data").mkdir(parents=True)
    assert main(["cache", "prune", "--dir", str(workspace.cache), "--max-gb", "100"]) == 0
    assert not dead.exists() and live.exists()


def test_next_build_removes_staging_of_dead_processes_only(workspace, dead_pid):
    from sdbuild.folders import owner_tag

    host = owner_tag().rpartition("-")[0]
    recipe_dir = workspace.out / "tiny"
    dead = recipe_dir / f".0123456789abcdef{PARTIAL}{host}-{dead_pid}"
    live = recipe_dir / f".0123456789abcdef{PARTIAL}{owner_tag()}"
    other_host = recipe_dir / f".0123456789abcdef{PARTIAL}elsewhere-{dead_pid}"
    for folder in (dead, live, other_host):
        (folder / "tmp" / "big.mlpackage").mkdir(parents=True)
    assert remove_abandoned_staging(recipe_dir) == [dead]
    assert live.exists() and other_host.exists()


# ---------------------------------------------------------------------------------------------
# Runner options, refused before any model is loaded (the build folder need not exist).

RUNNER_CASES = [
    ("guidance_nan", ["--guidance-scale", "nan"], ["--guidance-scale nan is not a finite number"]),
    ("guidance_inf", ["--guidance-scale=-inf"], ["--guidance-scale -inf is not a finite number"]),
    ("strength_nan", ["--strength", "nan", "--init-image", "{tmp}/picture.png"], ["--strength nan"]),
    ("init_image_missing", ["--init-image", "{tmp}/missing.png"], ["--init-image", "not a readable image"]),
    ("init_image_not_image", ["--init-image", "{tmp}/a-file"], ["--init-image", "not a readable image"]),
    ("mask_without_image", ["--mask", "{tmp}/picture.png"], ["--mask needs --init-image"]),
    ("mask_not_image", ["--init-image", "{tmp}/picture.png", "--mask", "{tmp}/a-file"], ["--mask", "not a readable image"]),
    ("mask_other_size", ["--init-image", "{tmp}/picture.png", "--mask", "{tmp}/small.png"],
     ["--mask", "is 4x4 but --init-image is 8x8", "picture's size"]),
    ("output_under_file", ["--output", "{tmp}/a-file/out.png"], ["--output", "is a file"]),
    ("output_is_folder", ["--output", "{tmp}"], ["--output", "is a folder"]),
]


@pytest.mark.parametrize("args, words", [c[1:] for c in RUNNER_CASES], ids=[c[0] for c in RUNNER_CASES])
def test_bad_runner_options_fail_in_one_line(args, words, workspace, capsys):
    from PIL import Image

    workspace.root.joinpath("a-file").write_text("not an image")
    Image.new("RGB", (8, 8)).save(workspace.root / "picture.png")
    Image.new("L", (4, 4)).save(workspace.root / "small.png")
    before = sorted(workspace.root.rglob("*"))
    args = [a.replace("{tmp}", str(workspace.root)) for a in args]
    assert runner_main(["--build", str(workspace.root / "no-build"), "--prompt", "x", *args]) == 2
    assert_one_line_error(capsys.readouterr().err, *words)
    assert sorted(workspace.root.rglob("*")) == before, "nothing was written"


# ---------------------------------------------------------------------------------------------
# Faults in a running build (subprocesses of the real CLI).


def _stage_line(stage: str) -> str:
    return f"vae_encoder     {stage:<9} ..."


def test_kill_9_at_each_stage_loses_nothing_and_next_build_cleans_up(workspace):
    args = [*SMALL_BUILD, *workspace.build_args()]
    for stage in ("convert", "verify", "store"):
        status, stderr = interrupt_at(args, workspace, _stage_line(stage))
        assert status == -signal.SIGKILL, stderr[-2000:]
        for build in published_builds(workspace.out):  # killed after the rename: a whole build
            assert check_build(build).problems == []
        entries = workspace.cache / "entries"
        assert_cache_sound_ignoring_staging(workspace.cache)
        assert entries.exists()
    assert staging_left(workspace.out), "kill -9 leaves staging (the next build removes it)"
    result = run_cli(args, workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    assert staging_left(workspace.out) == []
    (build,) = published_builds(workspace.out)
    assert check_build(build).problems == []
    assert_cache_sound(workspace.cache)
    assert list(workspace.tmp.iterdir()) == [], "conversion temp files went to the build's staging"


def assert_cache_sound_ignoring_staging(cache_dir):
    """A killed builder's staging may remain until the next build; its entries must be sound."""
    staging = cache_dir / "staging"
    kept = staging.rename(cache_dir / "staging-aside") if staging.exists() else None
    staging.mkdir()
    try:
        assert_cache_sound(cache_dir)
    finally:
        staging.rmdir()
        if kept is not None:
            kept.rename(staging)


@pytest.mark.parametrize("sig, status, stage", [(signal.SIGTERM, 143, "trace"), (signal.SIGINT, 130, "load")],
                         ids=["sigterm", "ctrl-c"])
def test_signal_ends_build_in_one_line_and_removes_staging(sig, status, stage, workspace):
    code, stderr = interrupt_at([*SMALL_BUILD, *workspace.build_args()], workspace, _stage_line(stage), sig)
    assert code == status, stderr[-2000:]
    assert_one_line_error(stderr, f"interrupted by {signal.Signals(sig).name}")
    assert_nothing_left(workspace)


@pytest.mark.parametrize("sig, raised", [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_swallowed_interrupt_still_stops_the_build(sig, raised):
    """coremltools' converter has bare `except:` clauses; the next stage boundary raises again."""
    timer = StageTimer(total=1, stream=io.StringIO())
    with interruptible():
        try:
            os.kill(os.getpid(), sig)
            time.sleep(1)  # the handler runs here
        except:  # noqa: E722 - what library code does
            pass
        with pytest.raises(raised):
            with timer.stage(1, "unet", "verify"):
                pass
    assert "verify" not in timer.stream.getvalue(), "no stage starts after the interrupt"


def test_two_builders_on_one_cache(workspace):
    first, second = workspace.root / "a", workspace.root / "b"
    env = workspace.env()
    processes = [
        subprocess.Popen([sys.executable, "-m", "sdbuild", *SMALL_BUILD, f"output.dir={out}",
                          f"cache.dir={workspace.cache}"], stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        for out in (first, second)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    manifests = [(b / "manifest.json").read_bytes() for out in (first, second) for b in published_builds(out)]
    assert len(manifests) == 2 and manifests[0] == manifests[1]
    stages = [json.loads(r.read_text())["stage"] for r in (workspace.cache / "entries").glob("*/record.json")]
    assert sorted(stages) == ["convert", "verify"], "each stage entry was made once"
    assert_cache_sound(workspace.cache)


@pytest.fixture
def small_disk(workspace):
    """A 400 kB tmpfs: too small for the build's packages; skipped where mounting is not allowed."""
    mount = workspace.root / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_fails_in_one_line_and_leaves_nothing(small_disk, workspace):
    out, cache = small_disk / "out", small_disk / "cache"
    result = run_cli([*SMALL_BUILD, f"output.dir={out}", f"cache.dir={cache}"], workspace)
    assert result.returncode == 2, result.stderr[-3000:]
    assert_one_line_error(result.stderr, "no space left on device", "nothing was published")
    assert published_builds(out) == [] and staging_left(out) == []
    assert_cache_sound(cache)
    assert list(workspace.tmp.iterdir()) == []
