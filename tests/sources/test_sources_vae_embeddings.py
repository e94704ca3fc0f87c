"""Another VAE's sources load the same weights by every route; embedding files in every layout
give the same tokens and vectors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sdbuild.config.schema import SourceKind, VaeConfig
from sdbuild.sources.embeddings import expand_multi_vector_tokens, read_embedding, write_synthetic_embedding
from sdbuild.sources.synthetic import resolve_synthetic
from sdbuild.sources.vae import resolve_vae, write_synthetic_vae

ARCHITECTURE = "tiny-sd15"


def _weights(model, **vae) -> dict[str, torch.Tensor]:
    addition = resolve_vae(VaeConfig(**vae), model, allow_pickle=False)
    return addition.apply("vae", load=None).state_dict()


def test_a_vae_folder_its_original_layout_file_and_its_synthetic_seed_load_the_same_weights(tmp_path):
    source = resolve_synthetic(ARCHITECTURE, 0)
    folder = write_synthetic_vae(ARCHITECTURE, 1, tmp_path / "vae")
    file = write_synthetic_vae(ARCHITECTURE, 1, tmp_path / "vae.safetensors")
    routes = [_weights(source, source=SourceKind.local, path=str(folder)),
              _weights(source, source=SourceKind.file, path=str(file)),
              _weights(source, source=SourceKind.synthetic, seed=1)]
    own = _weights(source, source=SourceKind.synthetic, seed=0)
    for weights in routes[1:]:
        assert weights.keys() == routes[0].keys()
        assert all(torch.equal(weights[k], routes[0][k]) for k in weights)
    assert not torch.equal(own["decoder.conv_in.weight"], routes[0]["decoder.conv_in.weight"])


@pytest.mark.parametrize("layout, suffix", [("diffusers", ".safetensors"), ("a1111", ".safetensors"), ("a1111", ".pt")])
def test_embedding_layouts_give_tokens_and_vectors(layout, suffix, tmp_path):
    path = write_synthetic_embedding(ARCHITECTURE, 3, "<tok>", 2, tmp_path / f"stem{suffix}", layout)
    embedding = read_embedding(str(path), ("text_encoder",), allow_pickle=True)
    reference = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    assert embedding.tokens == (["<tok>", "<tok>_1"] if layout == "diffusers" else ["stem", "stem_1"])
    assert torch.equal(embedding.vectors["text_encoder"], reference)


def test_sdxl_embedding_has_vectors_for_both_text_encoders(tmp_path):
    path = write_synthetic_embedding("tiny-sdxl-base", 0, "<x>", 1, tmp_path / "xl.safetensors")
    embedding = read_embedding(str(path), ("text_encoder", "text_encoder_2"), allow_pickle=False)
    assert embedding.tokens == ["xl"]
    assert set(embedding.vectors) == {"text_encoder", "text_encoder_2"}


def test_multi_vector_tokens_expand_as_diffusers_does():
    tokenizer = SimpleNamespace(added_tokens_encoder={"<s>": 1, "<s>_1": 2, "<s>_2": 3, "<one>": 4},
                                tokenize=lambda text: text.split())
    assert expand_multi_vector_tokens("a <s> and <one>", tokenizer) == "a <s> <s>_1 <s>_2 and <one>"
