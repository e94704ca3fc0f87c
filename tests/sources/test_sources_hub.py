"""Hub sources, offline: resolved from a Hugging Face cache laid out as the Hub client writes it."""

from __future__ import annotations

import httpx2
import huggingface_hub.constants
import pytest
import torch
from sources_helpers import ModelConfig, replace_with_pickle
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.utils import filter_repo_objects

import sdbuild.sources.hub
from sdbuild.errors import SdbuildError
from sdbuild.sources import load_submodel, resolve_source
from sdbuild.sources.hub import hub_allow_patterns

REPO = "acme/tiny-diffusion"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub(repo=REPO, revision=None, allow_pickle=False):
    return resolve_source(ModelConfig("hub", id=repo, revision=revision, allow_pickle=allow_pickle))


def test_cached_snapshot_resolves_and_loads_offline(hub_cache, snapshot_dir):
    snapshot = hub_cache(REPO, snapshot_dir("tiny-sd21-base"), COMMIT)
    source = _hub()
    assert (source.kind, source.model_id, source.revision, source.root) == ("hub", REPO, COMMIT, snapshot)
    assert source.arch.family == "sd2"
    # Blob names stand in for file hashes; they must agree with hashing the same files locally.
    local = resolve_source(ModelConfig("local", path=str(snapshot_dir("tiny-sd21-base"))))
    assert source.digest == local.digest
    assert _hub(revision=COMMIT).digest == source.digest
    synthetic = resolve_source(ModelConfig("synthetic", architecture="tiny-sd21-base"))
    unet = load_submodel(source, "unet").state_dict()
    expected = load_submodel(synthetic, "unet").state_dict()
    assert unet.keys() == expected.keys() and all(torch.equal(unet[k], expected[k]) for k in unet)
    with pytest.raises(SdbuildError, match="has no ControlNet of its own"):
        load_submodel(source, "controlnet")


def test_unknown_id_offline_names_the_id_and_the_alternatives(hub_cache):
    with pytest.raises(SdbuildError) as error:
        _hub("nobody/no-such-model")
    message = str(error.value)
    assert "'nobody/no-such-model'" in message and "not in the local cache" in message
    assert "model.source=local model.path=<folder>" in message and "model.source=synthetic" in message


def test_uncached_revision_offline_is_the_same_clear_error(hub_cache, snapshot_dir):
    hub_cache(REPO, snapshot_dir("tiny-sd21-base"), COMMIT)
    with pytest.raises(SdbuildError, match=f"'{REPO}' at revision 'v2' is not in the local cache"):
        _hub(revision="v2")


def test_invalid_id_is_unknown():
    with pytest.raises(SdbuildError, match="'not a valid id!' is unknown"):
        _hub("not a valid id!")


def test_unreachable_network_falls_back_to_the_cache(hub_cache, snapshot_dir, monkeypatch):
    """Not offline by setting, but the Hub cannot be reached: cached ids work, others fail clearly."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise httpx2.ConnectError("network unreachable")

    monkeypatch.setattr(HfApi, "repo_info", unreachable)
    hub_cache(REPO, snapshot_dir("tiny-sd21-base"), COMMIT)
    assert _hub().revision == COMMIT
    with pytest.raises(SdbuildError, match="'acme/other' is not in the local cache and the Hub cannot"):
        _hub("acme/other")


def test_unknown_id_online_is_reported_unknown(hub_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def not_found(self, repo_id, **kwargs):
        request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
        raise RepositoryNotFoundError("404 Client Error", response=httpx2.Response(404, request=request))

    monkeypatch.setattr(HfApi, "repo_info", not_found)
    with pytest.raises(SdbuildError, match="'acme/missing' is unknown") as error:
        _hub("acme/missing")
    assert "model.source=local model.path=<folder>" in error.value.hint


@pytest.fixture
def fetches(monkeypatch) -> list[tuple[str | None, bool]]:
    """(revision, fetched pickle weights?) of each snapshot_download call the resolver makes."""
    calls: list[tuple[str | None, bool]] = []
    real = sdbuild.sources.hub.snapshot_download

    def recording(repo_id, revision=None, allow_patterns=None):
        calls.append((revision, any(p.endswith(".bin") for p in allow_patterns)))
        return real(repo_id, revision=revision, allow_patterns=allow_patterns)

    monkeypatch.setattr(sdbuild.sources.hub, "snapshot_download", recording)
    return calls


def test_pickle_only_hub_model_is_refused_unless_allowed(hub_cache, snapshot_copy, fetches):
    model = snapshot_copy("tiny-sd21-base")
    replace_with_pickle(model / "vae")
    hub_cache(REPO, model, COMMIT)
    with pytest.raises(SdbuildError) as error:
        _hub()
    assert "vae/diffusion_pytorch_model.bin" in error.value.message
    assert "model.allow_pickle=true" in error.value.hint
    assert fetches == [(None, False)]
    source = _hub(allow_pickle=True)
    # Pickle weights are fetched only after safetensors fell short, pinned to the same commit.
    assert fetches[1:] == [(None, False), (COMMIT, True)]
    vae = load_submodel(source, "vae").state_dict()
    synthetic = resolve_source(ModelConfig("synthetic", architecture="tiny-sd21-base"))
    assert all(torch.equal(vae[k], t) for k, t in load_submodel(synthetic, "vae").state_dict().items())


def test_allow_pickle_fetches_no_pickle_when_safetensors_exist(hub_cache, snapshot_dir, fetches):
    hub_cache(REPO, snapshot_dir("tiny-sd21-base"), COMMIT)
    assert _hub(allow_pickle=True).revision == COMMIT
    assert fetches == [(None, False)]


REPO_FILES = [
    ".gitattributes", "README.md", "model_index.json", "v2-1_512-ema-pruned.ckpt",
    "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
    "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.safetensors.index.json",
    "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
]


def test_allow_patterns_fetch_configs_tokenizer_and_full_precision_safetensors_only():
    fetched = set(filter_repo_objects(REPO_FILES, allow_patterns=hub_allow_patterns(allow_pickle=False)))
    assert fetched == {
        "model_index.json", "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
        "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
    }
    with_pickle = set(filter_repo_objects(REPO_FILES, allow_patterns=hub_allow_patterns(allow_pickle=True)))
    assert with_pickle - fetched == {"text_encoder/pytorch_model.bin", "unet/diffusion_pytorch_model.bin"}
