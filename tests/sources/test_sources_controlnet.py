"""ControlNet entries: a local folder, a Hub repo, an original-layout file and synthetic weights of
the same seed resolve to the same weights; identities follow content; bad entries fail in one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdbuild.errors import SdbuildError
from sdbuild.sources.controlnet import resolve_controlnets
from sdbuild.sources.synthetic import resolve_synthetic
from sdbuild.sources.synthetic_controlnet import write_synthetic_controlnet

ARCHITECTURE, SEED = "tiny-sd15", 4
COMPONENTS = ["text_encoder", "control-unet", "controlnet", "vae_decoder"]


@dataclass
class Entry:
    """Duck-typed stand-in for the recipe schema's ControlNetConfig."""

    source: str
    id: str | None = None
    revision: str | None = None
    path: str | None = None
    seed: int = SEED
    allow_pickle: bool = False


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("controlnet-sources")
    return {"folder": write_synthetic_controlnet(ARCHITECTURE, SEED, root / "canny"),
            "file": write_synthetic_controlnet(ARCHITECTURE, SEED, root / "canny.safetensors")}


def _resolve(*entries: Entry, cache: Path, architecture: str = ARCHITECTURE):
    return resolve_controlnets(entries, COMPONENTS, resolve_synthetic(architecture, 0), cache)


def test_every_route_gives_the_synthetic_weights(written, hub_cache, tmp_path):
    hub_cache("lab/tiny-canny", written["folder"], "c" * 40)
    controlnets = _resolve(Entry("local", path=str(written["folder"])), Entry("file", path=str(written["file"])),
                           Entry("hub", id="lab/tiny-canny"), Entry("synthetic"), cache=tmp_path)
    assert [c.model_id for c in controlnets] == ["local/canny", "file/canny", "lab/tiny-canny", f"synthetic/controlnet-{SEED}"]
    assert controlnets[2].revision == "c" * 40
    states = [c.apply("controlnet", lambda: None).state_dict() for c in controlnets]
    assert len(states[0]) > 100
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        assert all(torch.equal(state[k], states[0][k]) for k in state)
    # The file was converted once into the cache, as a ControlNet folder.
    (converted,) = (tmp_path / "sources").iterdir()
    assert sorted(p.name for p in converted.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_identity_follows_the_weights_bytes(written, tmp_path):
    folder = Path(shutil.copytree(written["folder"], tmp_path / "canny"))
    before = _resolve(Entry("local", path=str(folder)), cache=tmp_path)[0].identity()
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = sorted(state)[0]
    state[name] = state[name] + 1
    from safetensors.torch import save_file

    save_file(state, weights)
    after = _resolve(Entry("local", path=str(folder)), cache=tmp_path)[0].identity()
    assert before["digest"] != after["digest"] and before["model_id"] == after["model_id"]


def _config_edit(key, value):
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
    return edit


def _truncate(folder: Path) -> None:
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


@pytest.mark.parametrize(("damage", "message"), [
    (_config_edit("cross_attention_dim", 768), "its cross_attention_dim is 768, the model's UNet has 32"),
    (_config_edit("block_out_channels", [320, 640, 1280, 1280]),
     "its block_out_channels is [320, 640, 1280, 1280], the model's UNet has [32, 64, 64, 64]"),
    (_config_edit("in_channels", 9), "its in_channels is 9, the model's UNet has 4"),
    (_config_edit("conditioning_channels", 1), "takes a 1-channel control image"),
    (_config_edit("_class_name", "UNet2DConditionModel"), "describes a UNet2DConditionModel, not a ControlNetModel"),
    (_truncate, "is truncated or corrupt"),
])
def test_a_bad_folder_fails_in_one_line(written, tmp_path, damage, message):
    folder = Path(shutil.copytree(written["folder"], tmp_path / "canny"))
    damage(folder)
    with pytest.raises(SdbuildError) as error:
        _resolve(Entry("local", path=str(folder)), cache=tmp_path)
    assert message in error.value.message and "\n" not in str(error.value)


def test_a_file_for_another_architecture_names_the_tensor(tmp_path):
    # tiny-sd21-base projects attention with linear layers, tiny-sd15 with 1x1 convolutions.
    file = write_synthetic_controlnet("tiny-sd21-base", SEED, tmp_path / "other.safetensors")
    with pytest.raises(SdbuildError, match=r"ControlNet file/other does not fit synthetic/tiny-sd15: .*tensor .* has shape"):
        _resolve(Entry("file", path=str(file)), cache=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()], "nothing written"


def test_sdxl_residuals_do_not_fit_an_sd15_unet(tmp_path):
    folder = write_synthetic_controlnet("tiny-sdxl-base", SEED, tmp_path / "xl")
    with pytest.raises(SdbuildError, match="its block_out_channels is .32, 64, 64., the model's UNet has .32, 64, 64, 64."):
        _resolve(Entry("local", path=str(folder)), cache=tmp_path)


@pytest.mark.parametrize(("entry", "message"), [
    (Entry("local"), "controlnet.0.source=local needs controlnet.0.path"),
    (Entry("local", path="/no/such/folder"), "ControlNet folder '/no/such/folder' does not exist"),
    (Entry("file", path="/no/such.safetensors"), "checkpoint file '/no/such.safetensors' does not exist"),
    (Entry("hub"), "controlnet.0.source=hub needs controlnet.0.id"),
    (Entry("hub", id="nobody/nothing"), "is not in the local cache and the Hub cannot be reached"),
])
def test_an_incomplete_entry_fails_in_one_line(entry, message, hub_cache, tmp_path):
    with pytest.raises(SdbuildError) as error:
        _resolve(entry, cache=tmp_path)
    assert message in error.value.message


def test_a_pickle_file_is_refused_unless_allowed(written, tmp_path):
    pickle = tmp_path / "canny.pth"
    torch.save(load_file(written["file"]), pickle)
    with pytest.raises(SdbuildError, match="controlnet.0.allow_pickle=true"):
        _resolve(Entry("file", path=str(pickle)), cache=tmp_path)
    (controlnet,) = _resolve(Entry("file", path=str(pickle), allow_pickle=True), cache=tmp_path)
    assert controlnet.model_id == "file/canny"


def test_not_a_controlnet_file(tmp_path):
    from safetensors.torch import save_file

    file = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, file)
    with pytest.raises(SdbuildError, match="is not a ControlNet checkpoint"):
        _resolve(Entry("file", path=str(file)), cache=tmp_path)


@pytest.mark.parametrize(("components", "entries", "message"), [
    (["text_encoder", "unet", "vae_decoder"], [Entry("synthetic")],
     "the recipe has controlnet entries but components lack control-unet and controlnet"),
    (["text_encoder", "control-unet", "vae_decoder"], [Entry("synthetic")], "components lack controlnet"),
    (COMPONENTS, [], "components list control-unet and controlnet but the recipe has no controlnet entry"),
    (COMPONENTS, [Entry("synthetic", id="a"), Entry("synthetic", seed=5, id="a")],
     "controlnet.0 and controlnet.1 would both be packaged as ControlNet_a.mlpackage"),
])
def test_components_and_entries_go_together(components, entries, message):
    with pytest.raises(SdbuildError) as error:
        resolve_controlnets(entries, components, resolve_synthetic(ARCHITECTURE, 0), None)
    assert message in error.value.message
