"""Op kernels by family; importing this package registers all of them."""

from sdbuild.evaluator.ops import (  # noqa: F401
    attention, compression, conv, elementwise, gather, image, linear, normalization, pool,
    reduction, tensor,
)
