"""One sweep variant, as a Hydra job: supervise its build in a child process and record the outcome.

The build runs as `python -m sdbuild <this variant's overrides>` (a single build, not a multirun),
so a variant killed by the kernel's OOM killer, by SIGKILL or by its own crash takes only its
child with it: this job records it as failed and returns normally, and the launcher goes on with
the other variants. The record (`variant.json` in the job's folder of the sweep) is what the
report at the end of the sweep reads.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from sdbuild.manifest import MANIFEST_FILE

RECORD_FILE = "variant.json"
LOG_FILE = "build.log"
# Overrides that choose how a sweep runs, not what a variant builds: not part of its name.
LAUNCH_GROUPS = ("launcher",)


@dataclass
class VariantRecord:
    num: int  # Hydra's job number: the variant's place in the sweep
    overrides: list[str]  # what this variant sets on the command line
    status: str  # "running" (or its job was killed), "ok" or "failed"
    reason: str = ""  # one line, for a failed variant
    build_dir: str = ""
    build_id: str = ""
    pid: int | None = None  # the build's process while it runs

    def write(self, folder: Path) -> None:
        """Replace the record in one rename, so a reader never sees half of it."""
        tmp = folder / f".{RECORD_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        tmp.replace(folder / RECORD_FILE)

    @classmethod
    def read(cls, folder: Path) -> "VariantRecord":
        return cls(**json.loads((folder / RECORD_FILE).read_text()))


def variant_overrides(task_overrides: list[str]) -> list[str]:
    return [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") not in LAUNCH_GROUPS]


def run_variant(cfg) -> None:
    """The Hydra task function of a multirun: build this variant, record how it went."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    task_overrides = list(hydra_cfg.overrides.task)
    record = VariantRecord(num=hydra_cfg.job.num, overrides=variant_overrides(task_overrides), status="running")
    label = " ".join(record.overrides) or "(recipe as is)"
    record.write(folder)  # left "running" if this job itself is killed: the report says so

    build_dir = _existing_or_planned_build(cfg, record)
    if record.status == "running" and build_dir is not None and (build_dir / MANIFEST_FILE).is_file():
        # Published builds are complete (moved into place only when done): a re-run of a finished
        # sweep reports them as they were built, rebuilding nothing.
        record.status = "ok"
    elif record.status == "running":
        _build_in_child(record, task_overrides, folder, Path(hydra_cfg.runtime.cwd), build_dir)
    record.pid = None
    record.write(folder)
    outcome = "ok" if record.status == "ok" else f"FAILED: {record.reason}"
    print(f"[variant {record.num}] {label}: {outcome}", file=sys.stderr, flush=True)


def _existing_or_planned_build(cfg, record: VariantRecord) -> Path | None:
    """Where this variant's build goes (validating its recipe); a bad recipe fails the variant."""
    from sdbuild.errors import SdbuildError
    from sdbuild.spec import validate

    try:
        spec = validate(cfg)
    except SdbuildError as exc:
        record.status, record.reason = "failed", str(exc)
        return None
    record.build_dir, record.build_id = str(spec.output_dir), spec.build_id
    return spec.output_dir


def _build_in_child(record: VariantRecord, overrides: list[str], folder: Path, cwd: Path, build_dir: Path | None) -> None:
    log_path = folder / LOG_FILE
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "sdbuild", *overrides], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        record.pid = child.pid
        record.write(folder)
        last_error, last_line = "", ""
        for line in child.stdout:
            log.write(line)
            print(f"[variant {record.num}] {line}", end="", file=sys.stderr, flush=True)
            if line.strip():
                last_line = line.strip()
            if line.startswith("error: "):
                last_error = line[len("error: "):].strip()
        returncode = child.wait()
    if returncode == 0:
        record.status = "ok"
        return
    record.status = "failed"
    if returncode < 0:
        record.reason = f"build process killed by {signal.Signals(-returncode).name} (out of memory, or killed)"
        if build_dir is not None:  # a killed build cannot clean up its staging folder: do it here
            shutil.rmtree(build_dir.parent / f".{build_dir.name}.partial-{child.pid}", ignore_errors=True)
    else:
        record.reason = last_error or f"build exited with code {returncode}: {last_line} (log: {log_path})"

