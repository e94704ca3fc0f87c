"""A finished mixed-bit analysis is a build-cache entry (listed and pruned by `sdbuild cache`); an
unfinished one is a progress file beside the entries, rewritten after every layer."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from sdbuild.cache import BuildCache
from sdbuild.mixed_bit.analysis import AnalysisSettings

ANALYSIS_VERSION = 1  # bump when the measurement changes, so cached analyses are not reused


def analysis_key(identity: str, settings: AnalysisSettings) -> str:
    return BuildCache.key("mixed_bit", {"version": ANALYSIS_VERSION, "identity": identity,
                                        "settings": asdict(settings)})


class AnalysisStore:
    def __init__(self, cache_dir: Path, identity: str, settings: AnalysisSettings):
        self.cache = BuildCache(cache_dir)
        self.key = analysis_key(identity, settings)
        self.progress = self.cache.root / "progress" / f"{self.key}.json"
        self.finished = False

    def read(self) -> dict[str, dict[int, float]]:
        """Layers analysed so far: all of a finished analysis, or an unfinished one's head start."""
        finished = self.cache.get(self.key)
        self.finished = finished is not None
        for path in (finished, self.progress):
            if path is not None and path.is_file():
                try:
                    layers = json.loads(path.read_text())["layers"]
                    return {name: {int(n): float(p) for n, p in curve.items()} for name, curve in layers.items()}
                except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                    pass  # a damaged progress file is only a lost head start
        return {}

    def save_progress(self, layers: dict[str, dict[int, float]]) -> None:
        self.progress.parent.mkdir(parents=True, exist_ok=True)
        partial = self.progress.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps({"layers": layers}, sort_keys=True))
        os.replace(partial, self.progress)

    def finish(self, layers: dict[str, dict[int, float]]) -> None:
        if self.finished:
            return
        self.save_progress(layers)
        self.cache.put(self.key, self.progress, {"what": "mixed-bit analysis", "layers": len(layers)})
        self.progress.unlink(missing_ok=True)
