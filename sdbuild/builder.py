"""Run a plan: each component goes through `stages.pipeline.COMPONENT_STAGES`, each stage a cache
entry keyed by what the stage declares it depends on; then store the build and its manifest.

Cache keys chain: compress's key contains convert's, and so on, so changing only quantization
reuses the float16 conversion, and changing only a placement or the compute-unit hint reuses
every stage.

Components run largest first (`plan.execution_order`). Stages that make nothing a later stage
reads (`Stage.runs_behind`: verification) run on a background thread, one component after another,
while the next component converts: conversion is mostly single-threaded Python, so the second core
verifies meanwhile. They wait for that conversion to start, so a verification never runs beside a
forward pass (the next component's trace), which would take the same cores and add its memory.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from sdbuild import __version__
from sdbuild.cache import BuildCache, default_cache_dir
from sdbuild.cache.remote import RemoteStore
from sdbuild.manifest import ComponentInfo, Manifest, write_manifest
from sdbuild.memory import return_freed_memory
from sdbuild.plan import ComponentJob, execution_order, plan_jobs
from sdbuild.progress import StageTimer, build_summary_table
from sdbuild.sources import write_tokenizer_files
from sdbuild.sources.embeddings import added_tokens
from sdbuild.spec import BuildSpec
from sdbuild.stages.pipeline import COMPONENT_STAGES
from sdbuild.stages.record import build_manifest, component_info, file_info
from sdbuild.stages.stage import Stage, StageContext
from sdbuild.stages.store import publish, staging_folder, write_build_info


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
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdbuild-behind")
        # On a failure, stages not started are dropped; the running one is waited for, as it
        # may write into the staging folder.
        stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        behind = _Behind(executor)
        for index, job in enumerate(execution_order(jobs), start=1):
            behind.raise_first_failure()  # a failed verification stops the next conversion
            rest = _build_component(index, job, spec, cache, timer, staging, cache_lookups, behind.start_waiting)
            behind.wait(job.name, rest)  # starts the previous component's, if this one converted nothing
        behind.start_waiting()
        components = {job.name: behind.result(job.name) for job in jobs}
        tokenizer = [file_info(staging, path) for path in write_tokenizer_files(spec.source, staging, added_tokens(spec.additions))]
        manifest = build_manifest(spec, components, tokenizer)
        write_manifest(manifest, staging)
        write_build_info(staging, {
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "platform": platform.platform(),
            "placement": spec.placement,
            "seconds": round(time.perf_counter() - started, 3),
            "stage_seconds": timer.timings,
            "stage_peak_gb": timer.peaks_gb,  # this process's resident memory while the stage ran
            "cache_hits": sum(cache_lookups),
            "cache_lookups": len(cache_lookups),
        })
        publish(staging, spec.output_dir)
    timer.summary("\n" + build_summary_table(manifest, timer.timings, timer.peaks_gb))
    timer.summary(f"built {spec.output_dir} in {time.perf_counter() - started:.1f}s")
    return BuildResult(spec.output_dir, manifest, timer.timings)


@dataclass(frozen=True)
class _ComponentRun:
    """Runs one component's stages through the cache, reporting each as it goes."""

    cache: BuildCache
    timer: StageTimer
    index: int
    component: str
    lookups: list[bool]

    def step(self, stage: str, detail: str = ""):
        return self.timer.stage(self.index, self.component, stage, detail)

    def cached(self, stage: Stage, key: str, ctx: StageContext) -> Path:
        """The cache entry ``key``, made by ``stage`` on a miss."""

        def create(tmp: Path) -> dict:
            if stage.reports_itself:
                stage.run(ctx, tmp).save(tmp)
            else:
                with self.step(stage.name):
                    stage.run(ctx, tmp).save(tmp)
            return_freed_memory()  # what the stage let go, before the next one grows
            return {"component": self.component}

        entry, hit = self.cache.get_or_create(key, create)
        self.lookups.append(hit)
        if hit:
            self.timer.note(f"[{self.index}/{self.timer.total}] {self.component:<15} {stage.name:<9} cached")
        return entry


class _Behind:
    """The stages that run behind, one component's at a time on ``executor``; a component's
    wait until the next component's conversion starts (`start_waiting`) or it ends without one."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._waiting: tuple[str, Callable[[], ComponentInfo]] | None = None
        self._futures: dict[str, Future] = {}

    def wait(self, name: str, rest: Callable[[], ComponentInfo]) -> None:
        self.start_waiting()
        self._waiting = (name, rest)

    def start_waiting(self) -> None:
        if self._waiting is not None:
            name, rest = self._waiting
            self._waiting = None
            self._futures[name] = self._executor.submit(rest)

    def raise_first_failure(self) -> None:
        for future in self._futures.values():
            if future.done() and future.exception() is not None:
                raise future.exception()

    def result(self, name: str) -> ComponentInfo:
        return self._futures[name].result()


def _build_component(index, job: ComponentJob, spec: BuildSpec, cache: BuildCache, timer: StageTimer, staging: Path,
                     cache_lookups: list[bool], single_threaded: Callable[[], None]) -> Callable[[], ComponentInfo]:
    """Runs the component's stages up to the first that runs behind; returns the rest, with
    storing the component."""
    run = _ComponentRun(cache, timer, index, job.name, cache_lookups)
    ctx = StageContext(spec, job, run.step, single_threaded=single_threaded)
    fields: dict = {}

    def run_stages(stages: tuple[Stage, ...]) -> None:
        for stage in stages:
            parts = stage.key_parts(ctx)
            if parts is None:
                fields.update(stage.skipped(ctx))
                continue
            key = cache.key(stage.name, parts)
            result = stage.result.load(run.cached(stage, key, ctx))
            stage.check(ctx, result)
            ctx.keys[stage.name], ctx.results[stage.name] = key, result
            fields.update(result.record(job))

    def finish() -> ComponentInfo:
        run_stages(COMPONENT_STAGES[first_behind:])
        with run.step("store"):
            files = {name: path for result in ctx.results.values() for name, path in result.files(job).items()}
            for name, path in files.items():
                cache.materialize(path, staging / name)
        return component_info(spec, job, file_info(staging, staging / job.file_name), fields)

    first_behind = next((i for i, stage in enumerate(COMPONENT_STAGES) if stage.runs_behind), len(COMPONENT_STAGES))
    run_stages(COMPONENT_STAGES[:first_behind])
    return finish
