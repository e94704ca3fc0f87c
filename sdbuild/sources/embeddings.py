"""Textual-inversion embeddings: the recipe's ``embeddings: [path, ...]``.

Formats, as diffusers' ``load_textual_inversion`` reads them:
- diffusers ``learned_embeds.safetensors`` / ``.bin``: one entry ``{token: vectors}``;
- A1111 ``.pt`` (``string_to_param: {"*": vectors}``) and ``.safetensors`` (``emb_params``): the
  token is the file's stem, as A1111 uses it (pass the same ``token=`` to diffusers);
- SDXL files (``clip_l`` for text_encoder, ``clip_g`` for text_encoder_2), token = the stem.
Pickle files (.pt, .bin) are read only with ``model.allow_pickle=true``, as checkpoints are.

Each file's token gets one new id per vector: ``token``, ``token_1``, ... (diffusers' multi-vector
naming), numbered after the text encoder's table (``vocab_size``, ``vocab_size + 1``, ...). The
text encoders get those rows; the build ships the tokenizer with them (``vocab.json`` lists them,
``added_tokens.json`` makes the tokenizer match them whole); the runner expands a multi-vector
token in a prompt to all of its tokens, as diffusers does.

    sdbuild synth-embedding --architecture tiny-sd15 --token "<tiny-style>" --out emb.safetensors
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from sdbuild.errors import SdbuildError
from sdbuild.sources.digest import file_sha256
from sdbuild.sources.resolved import TEXT_ENCODER_FOLDERS, TOKENIZER_OF, ResolvedSource
from sdbuild.sources.snapshot import PICKLE_SUFFIXES, check_safetensors
from sdbuild.sources.tokenizer import VOCAB_FILE, tokenizer_contents

if TYPE_CHECKING:
    import torch

SDXL_KEYS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}
A1111_SAFETENSORS_KEY = "emb_params"
A1111_PICKLE_KEY = "string_to_param"
FORMATS = ("diffusers", "a1111")
_SAFETENSORS = ".safetensors"
_HINT = "use a textual-inversion embedding (A1111 .pt/.safetensors, diffusers learned_embeds.safetensors)"


@dataclass(frozen=True)
class Embedding:
    file: Path
    sha256: str
    token: str
    vectors: dict = field(hash=False)  # text encoder folder -> (n, width) float32 tensor

    @property
    def tokens(self) -> list[str]:
        count = next(iter(self.vectors.values())).shape[0]
        return [self.token] + [f"{self.token}_{i}" for i in range(1, count)]


@dataclass(frozen=True)
class EmbeddingsAddition:
    """New tokens in the tokenizer(s) and their rows in the text encoders' token tables."""

    kind: ClassVar[str] = "embeddings"
    embeddings: tuple[Embedding, ...]
    first_id: int  # the id of the first new token: the text encoders' vocab_size
    folders: tuple[str, ...]  # the text encoders it extends

    def identity(self) -> dict:
        return {"files": [{"sha256": e.sha256, "tokens": e.tokens} for e in self.embeddings], "first_id": self.first_id}

    def token_ids(self) -> dict[str, int]:
        tokens = [token for embedding in self.embeddings for token in embedding.tokens]
        return {token: self.first_id + index for index, token in enumerate(tokens)}

    def apply(self, folder: str, load) -> "torch.nn.Module":
        import torch

        model = load()
        rows = torch.cat([e.vectors[folder] for e in self.embeddings])
        table = model.get_input_embeddings()
        if table.num_embeddings != self.first_id:
            raise SdbuildError(f"{folder} has {table.num_embeddings} token embeddings but its config says {self.first_id}",
                               "re-export the model: its config.json must match its weights")
        model.resize_token_embeddings(self.first_id + len(rows), mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[self.first_id:] = rows
        return model


def resolve_embeddings(paths: list[str], source: ResolvedSource, allow_pickle: bool) -> EmbeddingsAddition | None:
    """Read and check every file (they are small): format, vector widths, tokens new and unique."""
    if not paths:
        return None
    encoders = tuple(f for f in TEXT_ENCODER_FOLDERS if f in source.configs)
    widths = {f: int(source.configs[f]["hidden_size"]) for f in encoders}
    sizes = {int(source.configs[f]["vocab_size"]) for f in encoders}
    if len(sizes) != 1:
        raise SdbuildError(f"the text encoders of {source.model_id} have different vocab sizes {sorted(sizes)}",
                           "textual-inversion embeddings need text encoders sharing one vocabulary")
    vocabulary = set()
    for _, files in tokenizer_contents(source):
        vocabulary |= set(json.loads(files[VOCAB_FILE]))
    embeddings, seen = [], {}
    for path in paths:
        embedding = read_embedding(path, encoders, allow_pickle)
        for folder, vectors in embedding.vectors.items():
            if vectors.shape[-1] != widths[folder]:
                raise SdbuildError(
                    f"embedding '{path}' has vectors of width {vectors.shape[-1]} but {folder} of "
                    f"{source.model_id} takes {widths[folder]}",
                    "use an embedding trained for this model family",
                )
        for token in embedding.tokens:
            if token in vocabulary:
                raise SdbuildError(f"token '{token}' of embedding '{path}' is already in the vocabulary of {source.model_id}",
                                   "rename the file (A1111 files use their name as the token) to a new word")
            if token in seen:
                raise SdbuildError(f"token '{token}' comes from both '{seen[token]}' and '{path}'",
                                   "list each embedding once, with distinct tokens")
            seen[token] = path
        embeddings.append(embedding)
    return EmbeddingsAddition(tuple(embeddings), sizes.pop(), encoders)


def read_embedding(path: str, encoders: tuple[str, ...], allow_pickle: bool) -> Embedding:
    """One file's token and (n, width) vectors per text encoder in ``encoders``."""
    import torch

    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise SdbuildError(f"embedding file '{path}' does not exist", "list existing files in embeddings")
    data = _read_tensors(file, path, allow_pickle)
    if set(SDXL_KEYS.values()) & set(data):
        if len(encoders) == 1:
            raise SdbuildError(f"embedding '{path}' is an SDXL embedding (clip_l/clip_g) but the model has one text encoder",
                               "use an embedding trained for this model family")
        vectors = {f: data.get(SDXL_KEYS[f]) for f in encoders}
        token = file.stem
    elif len(encoders) > 1:
        raise SdbuildError(f"embedding '{path}' is for a single text encoder but the model has {', '.join(encoders)}",
                           "use an SDXL embedding (clip_l and clip_g vectors)")
    else:
        token, tensor = _single_vectors(data, file, path)
        vectors = {encoders[0]: tensor}
    for folder, tensor in vectors.items():
        key = SDXL_KEYS[folder] if len(encoders) > 1 else folder
        if not isinstance(tensor, torch.Tensor):
            raise SdbuildError(f"embedding '{path}' has no vectors for {key}", f"the model needs vectors for {', '.join(encoders)}")
        if tensor.dim() == 1:
            tensor = tensor[None]
        if tensor.dim() != 2 or tensor.shape[0] == 0 or not tensor.is_floating_point():
            raise SdbuildError(f"embedding '{path}' holds a {list(tensor.shape)} {tensor.dtype} tensor, not vectors", _HINT)
        if not torch.isfinite(tensor).all():
            raise SdbuildError(f"embedding '{path}' contains NaN or Inf", "re-export the embedding")
        vectors[folder] = tensor.detach().to(torch.float32).contiguous()
    if not (vectors.keys() == set(encoders) and len({v.shape[0] for v in vectors.values()}) == 1):
        raise SdbuildError(f"embedding '{path}' has different vector counts per text encoder", _HINT)
    return Embedding(file, file_sha256(file), token, vectors)


def _read_tensors(file: Path, path: str, allow_pickle: bool) -> dict:
    import torch

    if file.suffix == _SAFETENSORS:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        check_safetensors(file)  # a truncated file fails here, named
        try:
            return load_file(file)
        except SafetensorError as error:
            raise SdbuildError(f"embedding file '{path}' is not readable ({error})", _HINT) from error
    if file.suffix not in PICKLE_SUFFIXES:
        raise SdbuildError(f"embedding file '{path}' has an unknown extension '{file.suffix}'", _HINT)
    if not allow_pickle:
        raise SdbuildError(f"embedding file '{path}' is a pickle file",
                           "pickle files can execute code when loaded: set model.allow_pickle=true only if you trust it, or convert it to .safetensors")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch raise many types: all mean unreadable
        raise SdbuildError(f"embedding file '{path}' is not readable ({type(error).__name__}: {error})",
                           "the file is truncated or damaged; re-download it") from error
    if not isinstance(data, dict):
        raise SdbuildError(f"embedding file '{path}' holds a {type(data).__name__}, not a dict of vectors", _HINT)
    return data


def _single_vectors(data: dict, file: Path, path: str) -> tuple[str, object]:
    if A1111_PICKLE_KEY in data:
        params = data[A1111_PICKLE_KEY]
        return file.stem, next(iter(params.values())) if isinstance(params, dict) and len(params) == 1 else None
    if A1111_SAFETENSORS_KEY in data and len(data) == 1:
        return file.stem, data[A1111_SAFETENSORS_KEY]
    if len(data) == 1:
        return next(iter(data.items()))
    raise SdbuildError(f"embedding file '{path}' has keys {sorted(data)[:4]}, which no embedding format uses", _HINT)


def added_tokens(additions: tuple) -> dict[str, dict[str, int]]:
    """Tokenizer folder (tokenizer, tokenizer_2) -> {new token: id} of the recipe's embeddings."""
    found = next((a for a in additions if isinstance(a, EmbeddingsAddition)), None)
    if found is None:
        return {}
    return {TOKENIZER_OF[folder]: found.token_ids() for folder in found.folders}


def expand_multi_vector_tokens(text: str, tokenizer) -> str:
    """``token`` -> ``token token_1 ...`` for each multi-vector token in ``text``, as diffusers'
    textual-inversion loader rewrites prompts."""
    added = tokenizer.added_tokens_encoder
    for token in set(tokenizer.tokenize(text)):
        if token in added and f"{token}_1" in added:
            count = 1
            while f"{token}_{count}" in added:
                count += 1
            text = text.replace(token, " ".join([token] + [f"{token}_{i}" for i in range(1, count)]))
    return text


def write_synthetic_embedding(architecture: str, seed: int, token: str, vectors: int, dest: Path,
                              layout: str = "diffusers") -> Path:
    """Seeded vectors for ``token`` sized for ``architecture``'s text encoder(s): ``*.safetensors``
    in diffusers' layout ({token: vectors}) or A1111's (emb_params; SDXL: clip_l/clip_g), or
    ``*.pt`` in A1111's pickle layout (string_to_param)."""
    import torch
    from safetensors.torch import save_file

    from sdbuild.package_io import replace_path, staging_path
    from sdbuild.sources.synthetic import synthetic_configs

    dest = Path(dest)
    configs = synthetic_configs(architecture)
    encoders = [f for f in TEXT_ENCODER_FOLDERS if f in configs]
    generator = torch.Generator().manual_seed(seed)
    # Larger than trained token embeddings, so a prompt naming the token clearly changes the image.
    tensors = {f: torch.randn(vectors, int(configs[f]["hidden_size"]), generator=generator) for f in encoders}
    if dest.suffix not in (_SAFETENSORS, ".pt") or layout not in FORMATS:
        raise SdbuildError(f"cannot write an embedding as '{dest}' in layout '{layout}'",
                           f"name it *.safetensors or *.pt; layouts: {', '.join(FORMATS)}")
    if len(encoders) > 1:
        data = {SDXL_KEYS[f]: t for f, t in tensors.items()}
    elif dest.suffix == ".pt":
        data = {A1111_PICKLE_KEY: {"*": tensors[encoders[0]]}, "name": token, "step": 0}
    elif layout == "a1111":
        data = {A1111_SAFETENSORS_KEY: tensors[encoders[0]]}
    else:
        data = {token: tensors[encoders[0]]}
    with staging_path(dest) as staged:
        if dest.suffix == ".pt":
            torch.save(data, staged)
        else:
            save_file(data, staged)
        replace_path(staged, dest)
    return dest


def synth_embedding_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sdbuild synth-embedding",
        description="Write a synthetic textual-inversion embedding (the file's stem is the token of A1111 and SDXL files).",
    )
    parser.add_argument("--architecture", default="tiny-sd15", help="a bundled architecture (default tiny-sd15)")
    parser.add_argument("--seed", type=int, default=0, help="the vectors' seed (default 0)")
    parser.add_argument("--token", default="<tiny-style>", help="the token of a diffusers-layout file")
    parser.add_argument("--vectors", type=int, default=1, help="vectors per token (default 1)")
    parser.add_argument("--layout", choices=FORMATS, default="diffusers", help="for *.safetensors (default diffusers)")
    parser.add_argument("--out", required=True, type=Path, help="*.safetensors, or *.pt (A1111 pickle)")
    args = parser.parse_args(argv)
    print(write_synthetic_embedding(args.architecture, args.seed, args.token, args.vectors, args.out, args.layout))
    return 0
