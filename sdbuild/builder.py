"""Run a plan: for each component, stages load -> trace -> convert -> compress -> chunk -> verify,
each a cache entry keyed by everything it depends on; then store the build and its manifest.

Cache keys chain: compress's key contains convert's, and so on, so changing only quantization
reuses the float16 conversion, and changing only a placement or the compute-unit hint reuses
every stage.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sdbuild import __version__
from sdbuild.cache import BuildCache, default_cache_dir
from sdbuild.cache.remote import RemoteStore
from sdbuild.contract import VERSION_METADATA_KEY, Interface
from sdbuild.errors import SdbuildError
from sdbuild.manifest import (
    ChunkInfo, ComponentInfo, CompressionInfo, FileInfo, InterfaceInfo, Manifest, RecipeInfo,
    SourceInfo, VerificationInfo, write_manifest,
)
from sdbuild.package_io import package_digest, save_package
from sdbuild.plan import ComponentJob, plan_jobs
from sdbuild.progress import StageTimer, format_table
from sdbuild.sample_inputs import sample_inputs
from sdbuild.sources import write_tokenizer_files
from sdbuild.spec import BuildSpec
from sdbuild.stages import verify as verify_stage
from sdbuild.stages.compress import compress
from sdbuild.stages.store import publish, staging_folder, write_build_info
from sdbuild.versions import tool_versions

PACKAGE = "model.mlpackage"
REFERENCE = "reference.npz"
REPORT = "report.json"
VERIFICATION_SEED = 1234  # differs from the trace inputs' seed: verify on inputs not traced with


@dataclass(frozen=True)
class BuildResult:
    build_dir: Path
    manifest: Manifest
    timings: dict[str, dict[str, float]]


def build(spec: BuildSpec, stream=None) -> BuildResult:
    stream = stream or sys.stderr
    jobs = plan_jobs(spec)
    timer = StageTimer(total=len(jobs), stream=stream)
    timer.note(f"sdbuild {__version__}: {spec.recipe} ({spec.source.model_id}, {spec.attention}, "
               f"{spec.deployment_target}) -> {spec.output_dir}")
    started = time.perf_counter()
    cache_lookups: list[bool] = []  # one per stage looked up: hit or not (sweep reports count them)
    with ExitStack() as stack:
        staging = stack.enter_context(staging_folder(spec.output_dir))  # also holds the temp folder
        if spec.cache_enabled:
            remote = RemoteStore(spec.cache_remote, spec.cache_remote_options) if spec.cache_remote else None
            cache = BuildCache(spec.cache_dir or default_cache_dir(), remote=remote)
            cache.remove_abandoned_staging()
        else:  # same code path, with a store that lives for this build only (and no remote)
            cache = BuildCache(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sdbuild-"))))
        components = {
            job.component: _build_component(index, job, spec, cache, timer, staging, cache_lookups)
            for index, job in enumerate(jobs, start=1)
        }
        tokenizer = [_file_info(staging, path) for path in write_tokenizer_files(spec.source, staging)]
        manifest = _manifest(spec, components, tokenizer)
        write_manifest(manifest, staging)
        write_build_info(staging, {
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "platform": platform.platform(),
            "placement": spec.placement,
            "seconds": round(time.perf_counter() - started, 3),
            "stage_seconds": timer.timings,
            "cache_hits": sum(cache_lookups),
            "cache_lookups": len(cache_lookups),
        })
        publish(staging, spec.output_dir)
    timer.summary("\n" + summary_table(manifest, timer.timings))
    timer.summary(f"built {spec.output_dir} in {time.perf_counter() - started:.1f}s")
    return BuildResult(spec.output_dir, manifest, timer.timings)


def summary_table(manifest: Manifest, timings: dict[str, dict[str, float]]) -> str:
    rows = []
    for name, info in manifest.components.items():
        psnr = min((o.psnr_db for o in info.verification.outputs), default=None)
        rows.append([
            name,
            info.file,
            f"{info.bytes / 1e6:.1f}",
            info.compression.mode,
            "-" if psnr is None else f"{psnr:.1f}",
            f"{sum(timings.get(name, {}).values()):.1f}",
        ])
    return format_table(["component", "file", "MB", "compression", "PSNR dB", "seconds"], rows)


def _manifest(spec: BuildSpec, components: dict[str, ComponentInfo], tokenizer: list[FileInfo]) -> Manifest:
    source = spec.source
    return Manifest(
        build_id=spec.build_id,
        recipe=RecipeInfo(name=spec.recipe, config=spec.build_config),
        source=SourceInfo(
            kind=source.kind,
            model_id=source.model_id,
            revision=source.revision,
            digest=source.digest,
            architecture=source.arch.name,
            family=source.arch.family,
            scheduler=source.configs.get("scheduler", {}),
            latent_scaling_factor=source.arch.vae_scaling_factor,
            prediction_type=source.arch.prediction_type,
        ),
        latent_size=list(spec.latent_size),
        batch_size=spec.batch_size,
        attention=spec.attention,
        deployment_target=spec.deployment_target,
        compute_units=spec.compute_units,
        tokenizer=tokenizer,
        components=components,
        tools=tool_versions(),
    )


def _stage_parts(spec: BuildSpec, job: ComponentJob) -> dict:
    """What the float16 conversion of a component depends on, and nothing else."""
    return {
        "source": spec.source.identity(),
        "component": job.component,
        "interface": _interface_dict(job.interface),
        "attention": job.attention,
        "precision": job.precision,
        "target": spec.deployment_target,
        "tools": tool_versions(),
    }


@dataclass(frozen=True)
class _ComponentRun:
    """Runs one component's stages through the cache, reporting each as it goes."""

    cache: BuildCache
    timer: StageTimer
    index: int
    component: str
    lookups: list[bool]

    def stage(self, stage: str, detail: str = ""):
        return self.timer.stage(self.index, self.component, stage, detail)

    def cached(self, stage: str, key: str, work, *, reports_itself: bool = False) -> Path:
        """The cache entry ``key``, made by ``work(tmp)`` on a miss."""

        def create(tmp: Path) -> dict:
            if reports_itself:
                return work(tmp)
            with self.stage(stage):
                return work(tmp)

        entry, hit = self.cache.get_or_create(key, create)
        self.lookups.append(hit)
        if hit:
            self.timer.note(f"[{self.index}/{self.timer.total}] {self.component:<15} {stage:<9} cached")
        return entry


def _build_component(index, job: ComponentJob, spec: BuildSpec, cache: BuildCache, timer: StageTimer, staging: Path,
                     cache_lookups: list[bool]) -> ComponentInfo:
    name = job.component
    run = _ComponentRun(cache, timer, index, name, cache_lookups)
    convert_key = cache.key("convert", _stage_parts(spec, job))
    converted = run.cached("convert", convert_key, lambda tmp: _convert(tmp, spec, job, run), reports_itself=True)
    package = converted / PACKAGE
    compression = _uncompressed_report(package)
    final_key = convert_key
    if job.compress:
        final_key = cache.key("compress", {"after": convert_key, "quantization": spec.quantization_identity})
        compressed = run.cached("compress", final_key, lambda tmp: _compress(tmp, package, spec, job))
        package = compressed / PACKAGE
        compression = json.loads((compressed / REPORT).read_text())

    chunks: list[dict] = []
    chunk_dir = None
    if job.chunk:
        chunk_key = cache.key("chunk", {"after": final_key, "chunking": asdict(spec.chunking)})
        chunk_dir = run.cached("chunk", chunk_key, lambda tmp: _chunk(tmp, package, spec, job))
        chunks = json.loads((chunk_dir / REPORT).read_text())["chunks"]

    verification = {"verified": False, "reason": "verify=false in the recipe"}
    if spec.verify:
        verify_key = cache.key("verify", {"package": package_digest(package), "reference": convert_key,
                                          "chunks": [c["sha256"] for c in chunks]})
        verified = run.cached("verify", verify_key,
                              lambda tmp: _verify(tmp, package, converted / REFERENCE, chunk_dir, chunks))
        verification = json.loads((verified / REPORT).read_text())
        verify_stage.gate(name, verification, job.min_psnr, job.min_chunks_psnr)
        verification = {"verified": True, "threshold_db": job.min_psnr, **verification}

    with run.stage("store"):
        cache.materialize(package, staging / job.file_name)
        for chunk_info in chunks:
            cache.materialize(chunk_dir / chunk_info["file"], staging / chunk_info["file"])
    return ComponentInfo(
        **_file_info(staging, staging / job.file_name).model_dump(),
        interface=InterfaceInfo.model_validate(_interface_dict(job.interface)),
        precision=job.precision,
        deployment_target=spec.deployment_target,
        compute_units=spec.compute_units,
        attention=job.attention,
        compression=CompressionInfo.model_validate(compression),
        chunks=[ChunkInfo.model_validate(c) for c in chunks],
        verification=VerificationInfo.model_validate(verification),
    )


def _convert(tmp: Path, spec: BuildSpec, job: ComponentJob, run: _ComponentRun) -> dict:
    """Load only this component's weights, trace, convert; keep the float32 reference outputs."""
    # torch, diffusers and coremltools are imported only when a stage really runs, so a fully
    # cached rebuild costs seconds.
    from sdbuild.stages.convert import convert_module
    from sdbuild.stages.load import load_component
    from sdbuild.stages.trace import reference_outputs, trace_module

    with run.stage("load", f"{job.submodel} weights only"):
        module = load_component(spec.source, job)
    with run.stage("trace"):
        traced = trace_module(module, job.interface, sample_inputs(job.interface, seed=0))
        verify_inputs = sample_inputs(job.interface, seed=VERIFICATION_SEED)
        expected = reference_outputs(module, job.interface, verify_inputs)
        del module
    with run.stage("convert", f"{job.precision}, {spec.deployment_target}"):
        model = convert_module(traced, job.interface, precision=job.precision, target=spec.deployment_target)
        del traced
        save_package(model, tmp / PACKAGE, metadata=_metadata(spec, job))
    np.savez(tmp / REFERENCE, **{f"in.{k}": v for k, v in verify_inputs.items()},
             **{f"out.{k}": v for k, v in expected.items()})
    return {"component": job.component}


def _compress(tmp: Path, package: Path, spec: BuildSpec, job: ComponentJob) -> dict:
    from sdbuild.quiet import quiet_coremltools

    ct = quiet_coremltools()
    model = ct.models.MLModel(str(package), skip_model_load=True)
    compressed, report = compress(model, spec.quantization, job.component, spec.deployment_target)
    save_package(compressed, tmp / PACKAGE, metadata=_metadata(spec, job))
    report_data = report.as_manifest() if hasattr(report, "as_manifest") else asdict(report)
    (tmp / REPORT).write_text(json.dumps(report_data, sort_keys=True))
    return {"component": job.component}


def _chunk(tmp: Path, package: Path, spec: BuildSpec, job: ComponentJob) -> dict:
    from sdbuild.stages.chunk import chunk as chunk_package

    infos = chunk_package(package, spec.chunking, tmp, spec.source.model_id, job.component)
    chunks = []
    for info in infos:
        data = info if isinstance(info, dict) else asdict(info)
        path = tmp / data["file"]
        chunks.append({**data, "sha256": package_digest(path), "bytes": _size(path)})
    (tmp / REPORT).write_text(json.dumps({"chunks": chunks}, sort_keys=True))
    return {"component": job.component}


def _verify(tmp: Path, package: Path, reference: Path, chunk_dir: Path | None, chunks: list[dict]) -> dict:
    stored = np.load(reference)
    inputs = {k[3:]: stored[k] for k in stored.files if k.startswith("in.")}
    expected = {k[4:]: stored[k] for k in stored.files if k.startswith("out.")}
    result = verify_stage.compare(expected, verify_stage.run_backends(package, inputs))
    if chunk_dir is not None:
        from sdbuild.stages.chunk import verify_chunks

        result["chunks_psnr_db"] = round(verify_chunks(package, [chunk_dir / c["file"] for c in chunks], inputs), 2)
    (tmp / REPORT).write_text(json.dumps(result, sort_keys=True))
    return {"stage": "verify"}


def _uncompressed_report(package: Path) -> dict:
    weights = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    size = weights.stat().st_size if weights.exists() else 0
    return {"mode": "none", "nbits": [], "avg_bits_per_weight": 16.0,
            "weight_bytes_before": size, "weight_bytes_after": size}


def _metadata(spec: BuildSpec, job: ComponentJob) -> dict[str, str]:
    return {
        VERSION_METADATA_KEY: f"sdbuild-{__version__}",
        "sdbuild.component": job.component,
        "sdbuild.model_id": spec.source.model_id,
        "sdbuild.attention": job.attention or "",
    }


def _interface_dict(interface: Interface) -> dict:
    return interface.as_dict()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _file_info(root: Path, path: Path) -> FileInfo:
    if not path.exists():
        raise SdbuildError(f"expected build output {path} is missing", "this is a bug in sdbuild; please report it")
    return FileInfo(file=path.relative_to(root).as_posix(), sha256=package_digest(path), bytes=_size(path))
