"""iOS18 fused attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdbuild.evaluator.registry import Args, register


@register("scaled_dot_product_attention", since=18)
def scaled_dot_product_attention(a: Args) -> torch.Tensor:
    """softmax(Q K^T / sqrt(E) + mask) V; a bool mask marks the keys that take part."""
    mask = a.tensor("attn_mask") if "attn_mask" in a else None
    return F.scaled_dot_product_attention(a.tensor("query"), a.tensor("key"), a.tensor("value"),
                                          attn_mask=mask)
