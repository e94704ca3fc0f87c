"""Multirun sweeps: every launcher builds every variant, a failing or killed variant is isolated and
named, and the sweep report (CSV, Markdown, plot, previews) comes from what was recorded at build
time, so re-running a finished sweep rebuilds nothing and writes the same CSV bytes.

Variants differ only in the compute-unit hint: distinct builds made entirely from the shared stage
cache, so each costs a process start, not a conversion.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sdbuild.cli import CONF_DIR, PRIMARY_CONFIG
from sdbuild.config.schema import register_configs
from sdbuild.manifest import BUILD_INFO_FILE, read_manifest

ROOT = Path(__file__).resolve().parents[1]
FOUR_VARIANTS = "target.compute_units=ALL,CPU_ONLY,CPU_AND_GPU,CPU_AND_NE"


def sweep_command(tmp_path: Path, cache_dir: Path, *overrides: str, sweep_dir: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "sdbuild", "-m", "recipe=tiny", *overrides,
            f"output.dir={tmp_path / 'out'}", f"cache.dir={cache_dir}",
            f"hydra.sweep.dir={sweep_dir or tmp_path / 'sweep'}"]


def run_sweep(tmp_path, cache_dir, *overrides, sweep_dir=None) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(tmp_path, cache_dir, *overrides, sweep_dir=sweep_dir),
                          capture_output=True, text=True, cwd=ROOT, timeout=900)


def report_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "sweep-report.csv", newline="") as f:
        return list(csv.DictReader(f))


def published_builds(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "out" / "tiny").iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster started here; the sweep's launcher connects to it by address."""
    import ray
    info = ray.init(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False,
                    _node_ip_address="127.0.0.1", log_to_driver=False)
    yield info["gcs_address"]
    ray.shutdown()


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local", "ray"])
def test_four_variant_sweep_with_each_launcher(launcher, tmp_path, shared_cache_dir, tiny_build, request):
    extra = [f"hydra.launcher.ray.init.address={request.getfixturevalue('ray_cluster')}"] if launcher == "ray" else []
    result = run_sweep(tmp_path, shared_cache_dir, f"launcher={launcher}", FOUR_VARIANTS, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = report_rows(tmp_path / "sweep")
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert [next(o for o in r["overrides"].split() if o.startswith("target.")) for r in rows] == [
        f"target.compute_units={u}" for u in ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")]
    builds = published_builds(tmp_path)
    assert sorted(r["build_id"] for r in rows) == [b.name for b in builds]
    assert sorted(read_manifest(b).compute_units for b in builds) == ["ALL", "CPU_AND_GPU", "CPU_AND_NE", "CPU_ONLY"]
    for name in ("sweep-report.md", "sweep-report.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0


def test_failing_variant_is_isolated_named_and_the_report_reproduces(tmp_path, shared_cache_dir, tiny_build):
    sweep = ["target.compute_units=ALL,CPU_ONLY", "min_psnr.default=35,300"]
    first = run_sweep(tmp_path, shared_cache_dir, *sweep)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "error: 2 of 4 variants failed:" in first.stderr
    for failed in ("variant 1 (target.compute_units=ALL min_psnr.default=300)",
                   "variant 3 (target.compute_units=CPU_ONLY min_psnr.default=300)"):
        line = next(l for l in first.stderr.splitlines() if failed in l)
        assert "below the threshold of 300.00 dB" in line

    rows = report_rows(tmp_path / "sweep")
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "failed"]
    builds = {b.name: b for b in published_builds(tmp_path)}
    assert set(builds) == {rows[0]["build_id"], rows[2]["build_id"]}, "failed variants publish nothing"
    for row in (rows[0], rows[2]):
        manifest = read_manifest(builds[row["build_id"]])
        info = json.loads((builds[row["build_id"]] / BUILD_INFO_FILE).read_text())
        unet = manifest.components["unet"]
        assert row["unet_mb"] == f"{unet.bytes / 1e6:.3f}"
        assert row["unet_psnr_db"] == f"{min(o.psnr_db for o in unet.verification.outputs):.2f}"
        assert row["avg_bits"] == "16.00"
        assert row["seconds"] == f"{info['seconds']:.1f}"
        assert row["cache_hits"] == f"{info['cache_hits']}/{info['cache_lookups']}" == "8/8"
    assert "below the threshold of 300.00 dB" in rows[1]["reason"]
    markdown = (tmp_path / "sweep" / "sweep-report.md").read_text()
    assert "2 of 4 variants built" in markdown and "## Failed variants" in markdown

    build_info_before = {name: (b / BUILD_INFO_FILE).read_bytes() for name, b in builds.items()}
    again = run_sweep(tmp_path, shared_cache_dir, *sweep, sweep_dir=tmp_path / "sweep-again")
    assert again.returncode == 1
    assert (tmp_path / "sweep-again" / "sweep-report.csv").read_bytes() == (tmp_path / "sweep" / "sweep-report.csv").read_bytes()
    assert {name: (b / BUILD_INFO_FILE).read_bytes() for name, b in builds.items()} == build_info_before
    assert not (tmp_path / "sweep-again" / "0" / "build.log").exists(), "a finished variant is not rebuilt"


def test_sigkilled_variant_is_reported_failed_and_the_others_run(tmp_path, shared_cache_dir, tiny_build):
    sweep = subprocess.Popen(sweep_command(tmp_path, shared_cache_dir, "target.compute_units=ALL,CPU_ONLY"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    record = tmp_path / "sweep" / "0" / "variant.json"
    deadline = time.monotonic() + 300
    while not (record.exists() and json.loads(record.read_text()).get("pid")):
        assert time.monotonic() < deadline and sweep.poll() is None, "variant 0 never started its build"
        time.sleep(0.02)
    os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)
    _, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 1, stderr[-3000:]
    rows = report_rows(tmp_path / "sweep")
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "killed by SIGKILL" in rows[0]["reason"]
    assert "variant 0 (target.compute_units=ALL): build process killed by SIGKILL" in stderr
    assert not [p for p in (tmp_path / "out" / "tiny").iterdir() if ".partial-" in p.name], "no staging left behind"


def test_previews_render_every_built_variant(tmp_path, shared_cache_dir, tiny_build):
    from PIL import Image

    result = run_sweep(tmp_path, shared_cache_dir, "target.compute_units=ALL,CPU_ONLY",
                       "sweep.preview=true", "sweep.steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    previews = Image.open(tmp_path / "sweep" / "sweep-previews.png").convert("RGB")
    assert previews.size == (600, 330), "two tiles side by side"
    # Rendered images are noise-like and colourful; a tile that failed to render holds only text.
    for tile in (previews.crop((30, 60, 270, 300)), previews.crop((330, 60, 570, 300))):
        assert len(set(tile.getdata())) > 1000
    assert "sweep-previews.png" in (tmp_path / "sweep" / "sweep-report.md").read_text()


def test_variant_whose_job_died_is_reported_failed(tmp_path):
    from sdbuild.sweep.report import JOB_LOST, read_rows, write_csv
    from sdbuild.sweep.variant import VariantRecord

    for num, status in enumerate(["running", "failed"]):
        (tmp_path / str(num)).mkdir()
        VariantRecord(num=num, overrides=[f"quantization=kmeans{num + 4}"], status=status, reason="x" * num,
                      pid=4242).write(tmp_path / str(num))
    rows = read_rows(tmp_path)
    assert [(r.record.status, r.record.reason, r.label) for r in rows] == [
        ("failed", JOB_LOST, "quantization=kmeans4"), ("failed", "x", "quantization=kmeans5")]
    write_csv(rows, tmp_path / "sweep-report.csv")
    assert JOB_LOST in (tmp_path / "sweep-report.csv").read_text()


def compose_with_hydra(overrides: list[str]):
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(PRIMARY_CONFIG, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("launcher, target", [
    ("basic", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("ray", "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"),
])
def test_launcher_option_picks_its_hydra_launcher(launcher, target):
    assert compose_with_hydra([f"launcher={launcher}"]).hydra.launcher._target_ == target


def test_documented_slurm_example_composes_and_validates():
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    cfg = compose_with_hydra(["recipe=sd2-base", "launcher=submitit_slurm", "quantization=kmeans4",
                              "hydra.launcher.partition=cpu", "hydra.launcher.mem_gb=48",
                              "cache.dir=/shared/sdbuild-cache", "output.dir=/shared/builds"])
    # Merged into the plugin's own schema: a wrong key or type would raise here.
    launcher = OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), cfg.hydra.launcher)
    assert (launcher.partition, launcher.mem_gb, launcher.array_parallelism) == ("cpu", 48, 8)
    assert launcher.timeout_min > 0 and launcher.cpus_per_task > 0
    assert cfg.cache.dir == "/shared/sdbuild-cache"
