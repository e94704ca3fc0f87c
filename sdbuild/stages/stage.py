"""What every build stage declares, in one place: its cache key, how it runs, and its result.

A stage's cache key is made of the parts it names from the spec, the job and the keys of the
stages before it (so keys chain: changing quantization reuses the float16 conversion). A run
writes into an empty cache folder and returns a typed result that saves itself there; a cache
hit loads the same result from the entry. The builder only walks `pipeline.COMPONENT_STAGES`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from sdbuild import __version__
from sdbuild.contract import VERSION_METADATA_KEY

if TYPE_CHECKING:
    from sdbuild.plan import ComponentJob
    from sdbuild.spec import BuildSpec

# Where a stage that makes a Core ML package keeps it inside its cache entry.
PACKAGE = "model.mlpackage"
REPORT = "report.json"


class StageResult:
    """What a stage made: saved into its cache folder, loaded back from it on a hit."""

    def save(self, folder: Path) -> None:
        """Write what ``load`` needs beside the files the run wrote (nothing by default)."""

    @classmethod
    def load(cls, folder: Path) -> "StageResult":
        raise NotImplementedError

    def files(self, job: "ComponentJob") -> dict[str, Path]:
        """Build-folder file name -> stored file; a later stage's entry replaces an earlier one's."""
        return {}

    def record(self, job: "ComponentJob") -> dict:
        """The component's manifest fields this result sets (``ComponentInfo`` keyword arguments)."""
        return {}


@dataclass
class StageContext:
    """One component's build so far: what every stage may key on and read."""

    spec: "BuildSpec"
    job: "ComponentJob"
    step: Callable[..., AbstractContextManager]  # step(name, detail=""): a timed progress line
    # A stage calls it when what follows runs in one thread (coremltools' conversion), so that
    # work waiting for a free core (the previous component's verification) starts then.
    single_threaded: Callable[[], None] = lambda: None
    keys: dict[str, str] = field(default_factory=dict)  # stage name -> cache key, in run order
    results: dict[str, StageResult] = field(default_factory=dict)

    def latest_package(self) -> tuple[str, Path]:
        """(cache key, package) of the last stage that made the component's package."""
        for name in reversed(self.results):
            package = getattr(self.results[name], "package", None)
            if package is not None:
                return self.keys[name], package
        raise LookupError("no stage has made a package yet")

    def package_metadata(self) -> dict[str, str]:
        """User-defined metadata every package of this component carries."""
        return {
            VERSION_METADATA_KEY: f"sdbuild-{__version__}",
            "sdbuild.component": self.job.component,
            "sdbuild.model_id": self.spec.source.model_id,
            "sdbuild.attention": self.job.attention or "",
        }


class Stage:
    name: ClassVar[str]  # the cache key's prefix and the progress line's stage column
    result: ClassVar[type[StageResult]]
    reports_itself: ClassVar[bool] = False  # True: run() prints its own progress steps
    # True: it and the stages after it run on the builder's background thread, beside the next
    # component's stages (so none of them may make a file that a later stage reads).
    runs_behind: ClassVar[bool] = False

    def key_parts(self, ctx: StageContext) -> dict | None:
        """Everything the result depends on, as plain JSON data; None: the stage does not apply."""
        raise NotImplementedError

    def run(self, ctx: StageContext, out: Path) -> StageResult:
        """Make the result in the empty folder ``out`` (the result is saved by the caller)."""
        raise NotImplementedError

    def check(self, ctx: StageContext, result: StageResult) -> None:
        """Fail the build on a result that must not be published (cached or fresh)."""

    def skipped(self, ctx: StageContext) -> dict:
        """Manifest fields of a component this stage does not apply to."""
        return {}
