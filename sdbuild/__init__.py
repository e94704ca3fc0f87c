"""sdbuild: declarative, reproducible builds of Stable Diffusion Core ML model variants."""

__version__ = "0.1.0"
