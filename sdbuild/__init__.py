"""sdbuild: declarative, reproducible builds of Stable Diffusion Core ML model variants.

Python API (see README: Python API): ``sdbuild.build(recipe, overrides=[...]) -> BuildResult``,
``sdbuild.open_build(path) -> OpenedBuild``. They load lazily: `import sdbuild` imports nothing
heavy (no torch, coremltools or Hydra).
"""

__version__ = "0.1.0"

_API = {
    "build": "sdbuild.api",
    "open_build": "sdbuild.api",
    "OpenedBuild": "sdbuild.api",
    "BuildResult": "sdbuild.builder",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'sdbuild' has no attribute {name!r}")
