"""Multi-head attention in the (B, C, 1, S) layout, in the three implementations of the reference.

- ORIGINAL: all heads in one batched matmul; best on GPU.
- SPLIT_EINSUM: one einsum per head, heads concatenated on the channel axis; keeps every tensor
  in a layout the Neural Engine runs natively.
- SPLIT_EINSUM_V2: as SPLIT_EINSUM with the query sequence cut into chunks of 512 when longer, so
  no (keys x queries) score tensor exceeds 512 queries.
"""

from __future__ import annotations

import torch
from torch import nn

from sdbuild.models.layers import conv1x1

QUERY_CHUNK = 512


def original(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    batch, channels, _, queries = q.shape
    head_dim = channels // heads
    q, k, v = (t.reshape(batch, heads, head_dim, -1) for t in (q, k, v))
    weights = torch.einsum("bhcq,bhck->bhqk", q, k).softmax(dim=-1)
    return torch.einsum("bhqk,bhck->bhcq", weights, v).reshape(batch, channels, 1, queries)


def _one_head(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (B, c, 1, Q), k_t (B, K, 1, c), v (B, c, 1, K) -> (B, c, 1, Q); softmax over keys (axis 1)."""
    weights = torch.einsum("bchq,bkhc->bkhq", q, k_t).softmax(dim=1)
    return torch.einsum("bkhq,bchk->bchq", weights, v)


def split_einsum(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                 query_chunk: int | None = None) -> torch.Tensor:
    k_t = k.transpose(1, 3)  # (B, K, 1, C): keys on the axis the softmax runs over
    outputs = []
    for q_h, k_h, v_h in zip(q.chunk(heads, dim=1), k_t.chunk(heads, dim=3), v.chunk(heads, dim=1)):
        if query_chunk is not None and q_h.shape[3] > query_chunk:
            parts = [_one_head(part, k_h, v_h) for part in q_h.split(query_chunk, dim=3)]
            outputs.append(torch.cat(parts, dim=3))
        else:
            outputs.append(_one_head(q_h, k_h, v_h))
    return torch.cat(outputs, dim=1)


def split_einsum_v2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    return split_einsum(q, k, v, heads, query_chunk=QUERY_CHUNK)


IMPLEMENTATIONS = {
    "ORIGINAL": original,
    "SPLIT_EINSUM": split_einsum,
    "SPLIT_EINSUM_V2": split_einsum_v2,
}


class Attention(nn.Module):
    """diffusers' ``Attention`` (to_q, to_k, to_v, to_out.0) on (B, C, 1, S) activations.

    Queries are scaled by 1/sqrt(head_dim) before the product rather than the scores after:
    the same result, but the scores stay small in float16. That is what ``upcast_attention``
    (SD 2.1) guards against on GPU, where diffusers computes them in float32 instead.

    ``fold_query_scale`` moves that scale into to_q's weight once the weights are loaded. Left
    as a multiply, coremltools folds it into the weight itself under a new constant name, and
    mixed-bit recipes and ``op_config.op_name`` rules could no longer find ``...to_q``.
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, head_dim: int,
                 implementation: str):
        super().__init__()
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.query_scale = head_dim**-0.5
        self.attend = IMPLEMENTATIONS[implementation]
        self.to_q = conv1x1(query_dim, inner, bias=False)
        self.to_k = conv1x1(context_dim, inner, bias=False)
        self.to_v = conv1x1(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([conv1x1(inner, query_dim)])

    def fold_query_scale(self) -> None:
        # A new tensor: the loaded weight may be shared with the source model, which must not change.
        self.to_q.weight = nn.Parameter(self.to_q.weight.detach() * self.query_scale, requires_grad=False)
        self.query_scale = 1.0

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = self.to_q(x)
        if self.query_scale != 1.0:
            q = q * self.query_scale
        out = self.attend(q, self.to_k(context), self.to_v(context), self.heads)
        return self.to_out[0](out)
