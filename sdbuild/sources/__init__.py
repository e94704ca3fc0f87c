"""Model sources: a Hub id, a local diffusers folder, a single-file checkpoint (converted into a
cached diffusers folder) or a synthetic (seeded) architecture.

``resolve_source`` pins a recipe's model to exact content cheaply (configs and digests only);
``load_submodel`` then loads one submodel's weights; ``write_tokenizer_files`` writes the
tokenizer an app needs; ``write_synthetic_snapshot`` puts a synthetic model on disk in the
Hugging Face diffusers layout.
"""

import importlib

from sdbuild.sources.resolve import resolve_source
from sdbuild.sources.resolved import ResolvedSource
from sdbuild.sources.synthetic import SYNTHETIC_SCHEME_VERSION
from sdbuild.sources.tokenizer import write_tokenizer_files

# These need torch and diffusers; importing them only when called keeps a cached rebuild (which
# loads no weights) and the CLI's fast failures free of those imports.
_LAZY = {
    "load_submodel": "sdbuild.sources.load",
    "write_synthetic_snapshot": "sdbuild.sources.synthetic_snapshot",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdbuild.sources' has no attribute '{name}'")

__all__ = [
    "ResolvedSource",
    "SYNTHETIC_SCHEME_VERSION",
    "load_submodel",
    "resolve_source",
    "write_synthetic_snapshot",
    "write_tokenizer_files",
]
