"""Model sources: a Hub id, a local diffusers folder or a synthetic (seeded) architecture.

``resolve_source`` pins a recipe's model to exact content cheaply (configs and digests only);
``load_submodel`` then loads one submodel's weights; ``write_tokenizer_files`` writes the
tokenizer an app needs; ``write_synthetic_snapshot`` puts a synthetic model on disk in the
Hugging Face diffusers layout.
"""

from sdbuild.sources.load import load_submodel
from sdbuild.sources.resolve import resolve_source
from sdbuild.sources.resolved import ResolvedSource
from sdbuild.sources.synthetic import SYNTHETIC_SCHEME_VERSION
from sdbuild.sources.synthetic_snapshot import write_synthetic_snapshot
from sdbuild.sources.tokenizer import write_tokenizer_files

__all__ = [
    "ResolvedSource",
    "SYNTHETIC_SCHEME_VERSION",
    "load_submodel",
    "resolve_source",
    "write_synthetic_snapshot",
    "write_tokenizer_files",
]
