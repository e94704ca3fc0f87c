"""Which attention implementations exist, which components they apply to, and the reference's
advice on choosing one. Needs no torch, so validating and planning a build stay light (a warm
rebuild never imports it)."""

from __future__ import annotations

import warnings

from sdbuild import contract
from sdbuild.config.schema import AttentionImplementation
from sdbuild.contract import ArchInfo
from sdbuild.errors import SdbuildError

ATTENTION_IMPLEMENTATIONS = tuple(choice.value for choice in AttentionImplementation)

# Components whose graph contains attention of the chosen implementation.
ATTENTION_COMPONENTS = (contract.UNET, contract.REFINER, contract.CONTROL_UNET, contract.CONTROLNET)


def check_attention(component: str, attention: str, arch: ArchInfo) -> None:
    """Reject unknown implementations; warn where the reference advises against a choice."""
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise SdbuildError(f"unknown attention implementation '{attention}'",
                           f"choose one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    if attention == "SPLIT_EINSUM_V2" and arch.is_xl and component in ATTENTION_COMPONENTS:
        warnings.warn(
            f"SPLIT_EINSUM_V2 is not advised for SDXL ('{arch.name}'): the reference reports very "
            "long on-device compile times; SPLIT_EINSUM is the usual Neural Engine choice",
            stacklevel=3,
        )
