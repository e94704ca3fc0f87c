"""Tokenizer files: CLIP byte-level BPE ``vocab.json`` + ``merges.txt``.

Hub and local sources copy theirs from the snapshot; synthetic sources get a small vocabulary
trained here, offline and deterministically, with a plain BPE on a built-in English word list.
It keeps CLIP's id layout (256 byte symbols, the same 256 with ``</w>``, then merges, and
``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407) so every id is below the text encoders'
vocab_size and end-of-text is the highest id, as CLIPTextModel's legacy pooling assumes.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

from sdbuild.errors import SdbuildError
from sdbuild.sources.resolved import TOKENIZER_OF, ResolvedSource

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID = 49406, 49407
MAX_LENGTH = 77
END_OF_WORD = "</w>"
MERGES_HEADER = "#version: 0.2"
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"
TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE)
# Tokens matched whole before BPE (textual-inversion tokens); transformers' CLIPTokenizer reads it.
ADDED_TOKENS_FILE = "added_tokens.json"


# Training text for the synthetic vocabulary: words common in image prompts and everyday English.
_CORPUS = """
a an the of and or in on at to with from by for as is are was be it its this that these those
photo photograph picture image painting drawing sketch illustration portrait landscape render
art artwork artist style detailed highly intricate beautiful stunning realistic photorealistic
cinematic lighting light dark bright soft warm cold golden hour sunset sunrise night day sky
cloud clouds sun moon star stars space galaxy planet mars earth ocean sea water river lake
mountain mountains forest tree trees flower flowers garden field grass snow rain fog storm
city street building house castle tower bridge road car train ship boat plane rocket robot
astronaut riding horse dog cat bird fish dragon lion tiger wolf bear fox owl rabbit deer
man woman person people child girl boy king queen knight warrior wizard witch old young
face eyes hair smile hand hands wearing dress suit hat armor helmet sword shield crown
red orange yellow green blue purple pink white black gray grey brown silver gold colorful
small large big tiny huge tall long short wide round sharp smooth glowing shiny glass metal
wood stone fire ice crystal neon futuristic ancient medieval modern fantasy science fiction
magic mystical epic dramatic peaceful quiet happy sad scary cute funny elegant vintage retro
oil watercolor pencil ink digital concept anime cartoon comic pixel low poly three dimensional
high quality resolution sharp focus depth of field bokeh wide angle close up view shot lens
camera studio background foreground scene standing sitting walking running flying swimming
under over above below near far between inside outside front behind top bottom left right
morning evening winter summer spring autumn fall season weather wind shadow shadows reflection
table chair room window door wall floor kitchen library museum temple church market village
food fruit apple coffee cup bread cake book paper music guitar piano candle lamp mirror clock
one two three four five many some every very more most much little first last new best good
""".split()


def _byte_symbols() -> list[str]:
    """Byte-level BPE's printable stand-in for each byte, indexed by byte, in CLIP's scheme:
    printable Latin-1 bytes stand for themselves, the others map to chr(256 + n)."""
    printable = [
        *range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)
    ]
    others = [b for b in range(256) if b not in printable]
    symbols = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
    return [symbols[b] for b in range(256)]


def _base_symbols() -> list[str]:
    """The 256 byte symbols in vocab order (CLIP's: printable bytes first)."""
    symbols = _byte_symbols()
    printable = [s for s in symbols if ord(s) < 256]
    return printable + [s for s in symbols if ord(s) >= 256]


def _merge_pair(sequence: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(sequence):
        if i + 1 < len(sequence) and (sequence[i], sequence[i + 1]) == pair:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(sequence[i])
            i += 1
    return tuple(merged)


def _train_merges(words: list[str]) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair) until
    every word is one symbol."""
    byte_symbol = _byte_symbols()
    sequences: Counter[tuple[str, ...]] = Counter()
    for word, count in Counter(words).items():
        symbols = [byte_symbol[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        sequences[tuple(symbols)] += count
    merges: list[tuple[str, str]] = []
    while sequences:
        pairs: Counter[tuple[str, str]] = Counter()
        for sequence, count in sequences.items():
            for pair in zip(sequence, sequence[1:]):
                pairs[pair] += count
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for sequence, count in sequences.items():
            sequence = _merge_pair(sequence, best)
            if len(sequence) > 1:  # finished words add no more pairs
                merged[sequence] += count
        sequences = merged
    return merges


@lru_cache(maxsize=1)
def synthetic_tokenizer_texts() -> dict[str, str]:
    """Contents of the synthetic ``vocab.json`` and ``merges.txt``."""
    base = _base_symbols()
    vocab = {symbol: i for i, symbol in enumerate(base)}
    vocab |= {symbol + END_OF_WORD: len(base) + i for i, symbol in enumerate(base)}
    merges = _train_merges(_CORPUS)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    assert len(vocab) < BOS_ID, "synthetic vocabulary overlaps the special token ids"
    vocab |= {BOS_TOKEN: BOS_ID, EOS_TOKEN: EOS_ID}
    return {
        VOCAB_FILE: json.dumps(vocab, ensure_ascii=False),
        MERGES_FILE: "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n",
    }


def write_tokenizer_folder(dest: Path) -> None:
    """A snapshot ``tokenizer/`` folder with the synthetic vocabulary, loadable by
    ``CLIPTokenizer.from_pretrained``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in synthetic_tokenizer_texts().items():
        (dest / name).write_text(text, encoding="utf-8")
    special = {
        "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN
    }
    config = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True,
        **special,
    }
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def tokenizer_contents(source: ResolvedSource) -> list[tuple[str, dict[str, bytes]]]:
    """(tokenizer folder, {file name: bytes}) for each of the source's text encoders."""
    folders = [tokenizer for encoder, tokenizer in TOKENIZER_OF.items() if encoder in source.configs]
    if source.root is None:
        generated = {name: text.encode("utf-8") for name, text in synthetic_tokenizer_texts().items()}
        return [(folder, generated) for folder in folders]
    contents = []
    for folder in folders:
        files = {}
        for name in TOKENIZER_FILES:
            path = source.root / folder / name
            if not path.is_file():
                raise SdbuildError(
                    f"tokenizer file '{path}' is missing",
                    "the model folder needs tokenizer/vocab.json and tokenizer/merges.txt "
                    "(and tokenizer_2/ for SDXL)",
                )
            files[name] = path.read_bytes()
        contents.append((folder, files))
    return contents


def write_tokenizer_files(source: ResolvedSource, dest_dir: Path,
                          added: dict[str, dict[str, int]] | None = None) -> list[Path]:
    """Write the tokenizer files a Core ML Stable Diffusion app reads; returns the paths written.
    ``added`` maps a tokenizer folder to the new tokens of textual-inversion embeddings and their ids.

    Layout: ``dest_dir/vocab.json`` and ``dest_dir/merges.txt`` hold the first text encoder's
    tokenizer (the Swift ``Resources/`` convention). When the source has a second tokenizer
    (SDXL's ``tokenizer_2``) whose files differ from the first, they go to
    ``dest_dir/tokenizer_2/vocab.json`` and ``dest_dir/tokenizer_2/merges.txt``; identical ones
    (as in the published SDXL base) are not repeated.
    """
    added = added or {}
    contents = [(folder, _with_added(files, added.get(folder, {}))) for folder, files in tokenizer_contents(source)]
    primary = contents[0][1]
    targets = [(dest_dir, primary)]
    targets += [(dest_dir / folder, files) for folder, files in contents[1:] if files != primary]
    written = []
    for directory, files in targets:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (directory / name).write_bytes(data)
            written.append(directory / name)
    return written


def _with_added(files: dict[str, bytes], added: dict[str, int]) -> dict[str, bytes]:
    """The tokenizer files with ``added`` tokens: in vocab.json (so it lists every id the text
    encoder has) and in added_tokens.json (so tokenizers match them whole, never split by BPE)."""
    if not added:
        return files
    vocab = json.loads(files[VOCAB_FILE]) | added
    return {**files, VOCAB_FILE: json.dumps(vocab, ensure_ascii=False).encode("utf-8"),
            ADDED_TOKENS_FILE: json.dumps(added, ensure_ascii=False, indent=2).encode("utf-8")}
