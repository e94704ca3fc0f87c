"""Tokenizer files: synthetic CLIP BPE vocabulary and copies from snapshots."""

from __future__ import annotations

import json

import pytest
import torch
from sources_helpers import ModelConfig
from tokenizers.models import BPE
from transformers import CLIPTokenizer

from sdbuild.errors import SdbuildError
from sdbuild.sources import load_submodel, resolve_source, write_tokenizer_files

PROMPT = "A photo of an astronaut riding a horse on Mars, highly detailed"
BOS_ID, EOS_ID, VOCAB_SIZE = 49406, 49407, 49408


@pytest.fixture
def synthetic_tokenizer_dir(tmp_path):
    source = resolve_source(ModelConfig("synthetic", architecture="tiny-sd21-base"))
    written = write_tokenizer_files(source, tmp_path)
    assert sorted(p.name for p in written) == ["merges.txt", "vocab.json"]
    assert all(p.parent == tmp_path for p in written)
    return tmp_path


def test_synthetic_vocabulary_layout(synthetic_tokenizer_dir):
    vocab = json.loads((synthetic_tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    ids = sorted(vocab.values())
    assert len(ids) == len(set(ids)) and ids[-2:] == [BOS_ID, EOS_ID]
    assert vocab["<|startoftext|>"] == BOS_ID and vocab["<|endoftext|>"] == EOS_ID
    assert ids[:-2] == list(range(len(ids) - 2))  # ordinary tokens are dense from 0
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # CLIP's byte-symbol layout
    merges = (synthetic_tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2"
    assert all("".join(line.split(" ")) in vocab for line in merges[1:])


def test_transformers_clip_tokenizer_round_trip(synthetic_tokenizer_dir):
    # transformers 5 builds CLIPTokenizer from vocab.json/merges.txt in from_pretrained
    # (its constructor's vocab_file=/merges_file= arguments are not read any more).
    tokenizer = CLIPTokenizer.from_pretrained(synthetic_tokenizer_dir)
    ids = tokenizer(PROMPT, padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == BOS_ID and max(ids) == EOS_ID < VOCAB_SIZE
    words = tokenizer.convert_ids_to_tokens(ids[1 : ids.index(EOS_ID)])
    assert {"photo</w>", "astronaut</w>", "horse</w>", "mars</w>"} <= set(words)
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "a photo of an astronaut riding a horse on mars , highly detailed"
    # Words outside the training list fall back to smaller pieces, never to unknown.
    pieces = tokenizer("zyzzyva quokka").input_ids[1:-1]
    assert len(pieces) >= 4 and tokenizer.unk_token_id not in pieces


def test_plain_bpe_reader_agrees(synthetic_tokenizer_dir):
    """A second, independent reader of the same files (as the Swift app's BPE tokenizer is)."""
    files = [str(synthetic_tokenizer_dir / name) for name in ("vocab.json", "merges.txt")]
    bpe = BPE.from_file(*files, end_of_word_suffix="</w>")
    assert [t.value for t in bpe.tokenize("horse")] == ["horse</w>"]
    tokenizer = CLIPTokenizer.from_pretrained(synthetic_tokenizer_dir)
    assert [t.id for t in bpe.tokenize("astronaut")] == tokenizer("astronaut").input_ids[1:-1]


def test_ids_drive_the_text_encoder_pooling(synthetic_tokenizer_dir):
    """CLIPTextModel pools at the argmax id: with end-of-text the highest id that is the eos token."""
    source = resolve_source(ModelConfig("synthetic", architecture="tiny-sd21-base"))
    encoder = load_submodel(source, "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(synthetic_tokenizer_dir)
    ids = torch.tensor([tokenizer(PROMPT, padding="max_length", max_length=77).input_ids])
    with torch.no_grad():
        out = encoder(ids)
    eos_position = ids[0].tolist().index(EOS_ID)
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, eos_position])


def test_snapshot_tokenizer_files_are_copied(snapshot_copy, tmp_path):
    root = snapshot_copy("tiny-sd21-base")
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\nh o\n")  # a distinct tokenizer
    source = resolve_source(ModelConfig("local", path=str(root)))
    out = tmp_path / "resources"
    written = write_tokenizer_files(source, out)
    assert written == [out / "vocab.json", out / "merges.txt"]
    for path in written:
        assert path.read_bytes() == (root / "tokenizer" / path.name).read_bytes()


def test_sdxl_second_tokenizer_only_when_it_differs(snapshot_copy, tmp_path):
    root = snapshot_copy("tiny-sdxl-base")
    source = resolve_source(ModelConfig("local", path=str(root)))
    assert [p.name for p in write_tokenizer_files(source, tmp_path / "same")] == ["vocab.json", "merges.txt"]
    (root / "tokenizer_2" / "merges.txt").write_text("#version: 0.2\nh o\n")
    source = resolve_source(ModelConfig("local", path=str(root)))
    written = write_tokenizer_files(source, tmp_path / "differ")
    assert [p.relative_to(tmp_path / "differ").as_posix() for p in written] == [
        "vocab.json", "merges.txt", "tokenizer_2/vocab.json", "tokenizer_2/merges.txt"
    ]
    assert written[3].read_text() == "#version: 0.2\nh o\n"


def test_missing_tokenizer_file_is_named(snapshot_copy, tmp_path):
    root = snapshot_copy("tiny-sd21-base")
    (root / "tokenizer" / "vocab.json").unlink()
    source = resolve_source(ModelConfig("local", path=str(root)))
    with pytest.raises(SdbuildError, match="tokenizer/vocab.json' is missing"):
        write_tokenizer_files(source, tmp_path / "out")
