"""Another VAE and textual-inversion embeddings, end to end: the tiny recipe with a synthetic VAE
of another seed (local folder) and two embeddings (a two-vector diffusers file and an A1111 .pt),
built once on top of the plain tiny build's cache; its generation matches diffusers with
``pipe.vae = AutoencoderKL...`` and ``pipe.load_textual_inversion(...)`` on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdbuild.cli import main
from sdbuild.runner.pipeline import GenerationSettings, Pipeline
from sdbuild.sources.embeddings import write_synthetic_embedding
from sdbuild.sources.vae import write_synthetic_vae
from tests.pipeline_parity import PARITY_PSNR_DB, diffusers_image, image_psnr, synthetic_folder
from tests.refusals import refused_build

ARCHITECTURE = "tiny-sd21-base"  # the tiny recipe's model, seed 0
VAE_SCALING_FACTOR = 0.25  # not the model's 0.18215: the runner must use the shipped VAE's
STYLE, TOY = "<tiny-style>", "tinytoy"  # a diffusers file's token; an A1111 file's name
PROMPT = f"{STYLE} {TOY}"
# A tiny random UNet follows its text weakly: strong guidance makes the embeddings' effect on the
# image clear (ignoring them costs ~35 dB against the reference at 15, ~30 at 7.5).
GUIDANCE = 15.0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vae-embeddings-inputs")
    vae = write_synthetic_vae(ARCHITECTURE, 1, root / "vae")
    config = json.loads((vae / "config.json").read_text())
    (vae / "config.json").write_text(json.dumps({**config, "scaling_factor": VAE_SCALING_FACTOR}))
    return {
        "vae": vae,
        "style": write_synthetic_embedding(ARCHITECTURE, 0, STYLE, 2, root / "style.safetensors"),
        "toy": write_synthetic_embedding(ARCHITECTURE, 1, "ignored", 1, root / f"{TOY}.pt"),
    }


def _overrides(inputs: dict[str, Path]) -> list[str]:
    return ["vae.source=local", f"vae.path={inputs['vae']}", f"embeddings=[{inputs['style']},{inputs['toy']}]",
            "model.allow_pickle=true"]


@pytest.fixture(scope="module")
def custom_build(tiny_build, inputs, shared_cache_dir, tmp_path_factory) -> Path:
    """The tiny recipe with the VAE and the embeddings, on the plain tiny build's cache."""
    root = tmp_path_factory.mktemp("vae-embeddings-build")
    assert main([*_overrides(inputs), f"output.dir={root}", f"cache.dir={shared_cache_dir}", "--quiet"]) == 0
    (build,) = [p for p in (root / "tiny").iterdir() if not p.name.startswith(".")]
    return build


def test_only_the_vae_and_the_text_encoder_are_converted_again(custom_build, tiny_build, inputs, tmp_path):
    from sdbuild.plan import plan_jobs
    from sdbuild.preflight import compose_recipe
    from sdbuild.spec import validate
    from sdbuild.stages.convert import ConvertStage
    from sdbuild.stages.stage import StageContext

    def convert_keys(overrides: list[str]) -> dict[str, dict]:
        spec = validate(compose_recipe([*overrides, f"output.dir={tmp_path}"]))
        return {job.component: ConvertStage().key_parts(StageContext(spec, job, step=None)) for job in plan_jobs(spec)}

    plain, custom = convert_keys([]), convert_keys(_overrides(inputs))
    assert [c for c in plain if plain[c] != custom[c]] == ["text_encoder", "vae_decoder", "vae_encoder"]
    assert [a["kind"] for a in custom["vae_decoder"]["additions"]] == ["vae"]
    assert [a["kind"] for a in custom["text_encoder"]["additions"]] == ["embeddings"]
    # The packages agree: the UNet is the plain build's, the others differ.
    manifest = json.loads((custom_build / "manifest.json").read_text())
    plain_manifest = json.loads((tiny_build / "manifest.json").read_text())
    assert manifest["components"]["unet"]["sha256"] == plain_manifest["components"]["unet"]["sha256"]
    for name in ("text_encoder", "vae_decoder", "vae_encoder"):
        assert manifest["components"][name]["sha256"] != plain_manifest["components"][name]["sha256"], name


def test_manifest_records_the_additions_the_scaling_factor_and_the_extended_tokenizer(custom_build, inputs):
    build = custom_build
    manifest = json.loads((build / "manifest.json").read_text())
    vae, embeddings = manifest["additions"]
    assert vae["kind"] == "vae" and vae["source"] == "local" and vae["scaling_factor"] == VAE_SCALING_FACTOR
    assert embeddings["kind"] == "embeddings"
    assert [f["tokens"] for f in embeddings["files"]] == [[STYLE, f"{STYLE}_1"], [TOY]]
    assert manifest["source"]["latent_scaling_factor"] == VAE_SCALING_FACTOR
    assert {f["file"] for f in manifest["tokenizer"]} == {"vocab.json", "merges.txt", "added_tokens.json"}
    added = json.loads((build / "added_tokens.json").read_text())
    assert added == {STYLE: 49408, f"{STYLE}_1": 49409, TOY: 49410}
    assert added.items() <= json.loads((build / "vocab.json").read_text()).items()


def _contiguous_vocabulary(pipe) -> None:
    """diffusers sizes the token table by len(tokenizer): for CLIP's gapless vocabulary that is its
    highest id + 1, but the synthetic vocabulary skips the ids below <|startoftext|>, so its length
    would shrink the table. Count it as CLIP's is counted."""
    cls = type(pipe.tokenizer)
    pipe.tokenizer.__class__ = type(cls.__name__, (cls,), {"__len__": lambda self: max(self.get_vocab().values()) + 1})


def _swap_vae(inputs):
    def prepare(pipe):
        from diffusers import AutoencoderKL

        pipe.vae = AutoencoderKL.from_pretrained(inputs["vae"])
    return prepare


def _load_embeddings(inputs):
    def prepare(pipe):
        _contiguous_vocabulary(pipe)
        pipe.load_textual_inversion(str(inputs["style"]))
        pipe.load_textual_inversion(str(inputs["toy"]), token=TOY)  # A1111: the file name is the token
    return prepare


def test_generation_matches_diffusers_with_the_same_vae_and_embeddings(custom_build, inputs, tmp_path):
    from diffusers import StableDiffusionPipeline

    build = custom_build
    pipeline = Pipeline(build, backend="evaluator", progress=lambda text: None)
    ids = pipeline.token_ids(PROMPT)[0].astype(int).tolist()
    assert [i for i in ids if i >= 49408] == [49408, 49409, 49410], "the tokens, the style's two vectors expanded"

    settings = GenerationSettings(prompt=PROMPT, steps=4, seed=7, guidance_scale=GUIDANCE)
    folder = synthetic_folder(ARCHITECTURE, 0, tmp_path)
    both = [_swap_vae(inputs), _load_embeddings(inputs)]
    reference = diffusers_image(StableDiffusionPipeline, folder, settings, lambda pipe: [p(pipe) for p in both])
    ours = pipeline.generate(settings)
    assert image_psnr(ours, reference) >= PARITY_PSNR_DB
    # Either addition ignored gives another image: each one matters to the comparison.
    without_vae = diffusers_image(StableDiffusionPipeline, folder, settings, both[1])
    without_embeddings = diffusers_image(StableDiffusionPipeline, folder, settings, both[0])
    assert image_psnr(ours, without_vae) < PARITY_PSNR_DB
    assert image_psnr(ours, without_embeddings) < PARITY_PSNR_DB


def _truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:-8])
    return path


def _vae_with(folder: Path, **config) -> Path:
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **config}))
    return folder


@pytest.mark.parametrize("case, expected", [
    ("latent channels", "VAE '{path}' has latent_channels=8 but model synthetic/tiny-sd21-base has 4"),
    ("truncated vae", "is truncated"),
    ("not a vae file", "does not fit the model's VAE: it lacks"),
    ("vector width", "has vectors of width 48 but text_encoder of synthetic/tiny-sd21-base takes 32"),
    ("token in vocabulary", "token 'a' of embedding '{path}' is already in the vocabulary"),
    ("truncated embedding", "is truncated"),
    ("sdxl embedding", "is an SDXL embedding (clip_l/clip_g) but the model has one text encoder"),
    ("pickle not allowed", "is a pickle file"),
])
def test_bad_vae_or_embedding_fails_before_work_in_one_line(case, expected, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    if case == "latent channels":
        path = _vae_with(write_synthetic_vae(ARCHITECTURE, 1, tmp_path / "vae"), latent_channels=8)
        overrides = ["vae.source=local", f"vae.path={path}"]
    elif case == "truncated vae":
        path = write_synthetic_vae(ARCHITECTURE, 1, tmp_path / "vae.safetensors")
        overrides = ["vae.source=file", f"vae.path={_truncated(path)}"]
    elif case == "not a vae file":
        path = write_synthetic_embedding(ARCHITECTURE, 0, "<t>", 1, tmp_path / "t.safetensors")
        overrides = ["vae.source=file", f"vae.path={path}"]
    else:
        if case == "vector width":
            path = tmp_path / "wide.safetensors"
            save_file({"<wide>": torch.ones(1, 48)}, path)
        elif case == "token in vocabulary":
            path = write_synthetic_embedding(ARCHITECTURE, 0, "a", 1, tmp_path / "a.safetensors")
        elif case == "truncated embedding":
            path = _truncated(write_synthetic_embedding(ARCHITECTURE, 0, "<t>", 1, tmp_path / "t.safetensors"))
        elif case == "sdxl embedding":
            path = write_synthetic_embedding("tiny-sdxl-base", 0, "<x>", 1, tmp_path / "xl.safetensors")
        else:
            path = write_synthetic_embedding(ARCHITECTURE, 0, "<t>", 1, tmp_path / "t.pt")
        overrides = [f"embeddings=[{path}]"]
    err = refused_build(overrides, tmp_path, capsys)
    assert expected.format(path=path) in err, err


def test_sdxl_vae_converts_in_float16_only_when_it_says_it_is_safe(tmp_path):
    from sdbuild.plan import plan_jobs
    from sdbuild.preflight import compose_recipe
    from sdbuild.spec import validate

    def vae_dtypes(*overrides: str) -> set[str]:
        spec = validate(compose_recipe(["model=tiny-sdxl-base", f"output.dir={tmp_path / 'out'}", *overrides]))
        jobs = [job for job in plan_jobs(spec) if job.component.startswith("vae")]
        return {job.precision for job in jobs} | {t.dtype for job in jobs for t in job.interface.inputs}

    fixed = _vae_with(write_synthetic_vae("tiny-sdxl-base", 1, tmp_path / "fp16-fix"), force_upcast=False)
    assert vae_dtypes() == {"float32"}, "the contract keeps SDXL's own VAE in float32"
    assert vae_dtypes("vae.source=synthetic") == {"float32"}
    assert vae_dtypes("vae.source=local", f"vae.path={fixed}") == {"float16"}, "force_upcast=false: float16"
    assert vae_dtypes("vae.source=local", f"vae.path={fixed}", "vae.precision=float32") == {"float32"}
    assert vae_dtypes("vae.precision=float16") == {"float16"}
    assert not (tmp_path / "out").exists()
