"""The three attention implementations agree, and each really shapes the traced graph; the trace
keeps its forward's outputs as the verification reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdbuild import contract
from sdbuild.models import build_component_module
from sdbuild.models.attention import IMPLEMENTATIONS, QUERY_CHUNK, Attention
from sdbuild.sample_inputs import sample_inputs
from sdbuild.stages.trace import reference_outputs, trace_module, trace_with_outputs

from tiny_models import contract_inputs, submodels_for, tiny_source


def _plain_attention(q, k, v, heads):
    """Textbook (B, S, C) multi-head attention, to check the (B, C, 1, S) implementations against."""
    def split(t):
        batch, channels, _, length = t.shape
        return t.reshape(batch, heads, channels // heads, length).transpose(2, 3)

    weights = (split(q) @ split(k).transpose(2, 3)).softmax(dim=-1)
    out = weights @ split(v)
    batch, _, length, head_dim = out.shape
    return out.transpose(2, 3).reshape(batch, heads * head_dim, 1, length)


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("queries", [77, QUERY_CHUNK, 2 * QUERY_CHUNK + 100])
def test_implementations_match_plain_attention(implementation, queries):
    generator = torch.Generator().manual_seed(queries)
    heads, head_dim, keys = 3, 8, 77
    q = torch.randn(2, heads * head_dim, 1, queries, generator=generator) * head_dim**-0.5
    k = torch.randn(2, heads * head_dim, 1, keys, generator=generator)
    v = torch.randn(2, heads * head_dim, 1, keys, generator=generator)
    got = IMPLEMENTATIONS[implementation](q, k, v, heads)
    torch.testing.assert_close(got, _plain_attention(q, k, v, heads), rtol=1e-5, atol=1e-5)


def _einsum_count(attention: str, latent: int) -> int:
    arch = tiny_source("tiny-sd15").arch
    module = build_component_module(contract.UNET, submodels_for("tiny-sd15", contract.UNET), arch, attention)
    interface, _ = contract_inputs(contract.UNET, arch, latent)
    traced = trace_module(module, interface, sample_inputs(interface))
    return sum(node.kind() == "aten::einsum" for node in traced.inlined_graph.nodes())


def _attention_layers() -> list[Attention]:
    arch = tiny_source("tiny-sd15").arch
    module = build_component_module(contract.UNET, submodels_for("tiny-sd15", contract.UNET), arch, "ORIGINAL")
    return [m for m in module.modules() if isinstance(m, Attention)]


def test_split_einsum_traces_one_product_pair_per_head():
    layers = _attention_layers()
    assert _einsum_count("ORIGINAL", 16) == 2 * len(layers)
    assert _einsum_count("SPLIT_EINSUM", 16) == sum(2 * layer.heads for layer in layers)


def test_v2_chunks_only_sequences_longer_than_the_chunk():
    # 16x16 latents: at most 256 tokens, nothing to chunk.
    assert _einsum_count("SPLIT_EINSUM_V2", 16) == _einsum_count("SPLIT_EINSUM", 16)
    # 32x32 latents: the first down and last up block (1024 tokens) split their queries in two.
    assert _einsum_count("SPLIT_EINSUM_V2", 32) > _einsum_count("SPLIT_EINSUM", 32)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_v2_chunk_count_follows_the_query_length():
    layer = Attention(query_dim=16, context_dim=None, heads=2, head_dim=8, implementation="SPLIT_EINSUM_V2")
    x = torch.randn(1, 16, 1, 3 * QUERY_CHUNK + 1)
    graph = torch.jit.trace(layer.eval(), (x,)).inlined_graph
    einsums = sum(node.kind() == "aten::einsum" for node in graph.nodes())
    assert einsums == 2 * layer.heads * math.ceil(x.shape[-1] / QUERY_CHUNK)


@pytest.mark.parametrize("component", [contract.UNET, contract.TEXT_ENCODER, contract.VAE_DECODER])
def test_the_trace_keeps_the_outputs_of_its_forward_as_the_reference(component):
    """The convert stage's verification reference is the traced forward's outputs: they must be
    exactly the eager forward's, and the trace must not keep the hook that captured them."""
    arch = tiny_source("tiny-sd21-base").arch
    module = build_component_module(component, submodels_for("tiny-sd21-base", component), arch, "SPLIT_EINSUM")
    interface, _ = contract_inputs(component, arch, 8)
    inputs = sample_inputs(interface, seed=5)
    traced, outputs = trace_with_outputs(module, interface, inputs)
    expected = reference_outputs(module, interface, inputs)
    assert list(outputs) == [spec.name for spec in interface.outputs]
    for name, value in expected.items():
        assert np.array_equal(outputs[name], value), name
    assert not module._forward_hooks and not traced._c._get_forward_hooks()
