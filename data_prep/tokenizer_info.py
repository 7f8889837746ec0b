"""Loading a ``tokenizer.json`` (any ``tokenizers`` model: GPT-2, GPT-NeoX-20B, our own BPE) and
encoding documents with an end-of-document (EOD) token appended."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from data_prep.shard_writer import token_dtype_for_vocab

DEFAULT_EOD_TOKEN = "<|endoftext|>"  # GPT-2 (id 50256) and GPT-NeoX-20B (id 0) both use this


class TokenizerError(Exception):
    """The tokenizer file is missing or unusable (e.g. it lacks the EOD token)."""


@dataclass(frozen=True)
class TokenizerInfo:
    path: str
    sha256: str  # of the tokenizer.json bytes: shards are only comparable under the same hash
    vocab_size: int  # including added/special tokens
    eod_token: str
    eod_id: int
    dtype: str  # numpy name of the shard token dtype: "uint16" or "int32"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


_CACHE: dict[str, Tokenizer] = {}


def load_tokenizer(path: str | Path) -> Tokenizer:
    """One ``Tokenizer`` per file per process (workers load it once, not per shard)."""
    key = str(path)
    if key not in _CACHE:
        if not Path(path).is_file():
            raise TokenizerError(f"tokenizer file not found: {path}")
        try:
            _CACHE[key] = Tokenizer.from_file(key)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerError(f"cannot load tokenizer {path}: {e}") from None
    return _CACHE[key]


def describe_tokenizer(path: str | Path, eod_token: str = DEFAULT_EOD_TOKEN) -> TokenizerInfo:
    tokenizer = load_tokenizer(path)
    eod_id = tokenizer.token_to_id(eod_token)
    if eod_id is None:
        raise TokenizerError(
            f"tokenizer {path} has no token {eod_token!r} to mark document ends; pass the right one with --eod-token"
        )
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    return TokenizerInfo(
        path=str(Path(path).resolve()),
        sha256=file_sha256(path),
        vocab_size=vocab_size,
        eod_token=eod_token,
        eod_id=eod_id,
        dtype=token_dtype_for_vocab(vocab_size).name,
    )


def encode_documents(tokenizer: Tokenizer, texts: list[str], eod_id: int) -> list[list[int]]:
    """Token ids of each text, without the tokenizer's own special tokens (e.g. a BOS from a
    post-processor), with ``eod_id`` appended: the packed stream then reads doc, EOD, doc, EOD, ..."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # _fast skips offsets
    return [enc.ids + [eod_id] for enc in encode(texts, add_special_tokens=False)]
