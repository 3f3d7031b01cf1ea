"""Tokenizers behind one small interface, and `load_tokenizer(path)` that picks the right one.

Contract shared by every tokenizer:
  encode(text) -> list[int]      no BOS/EOS added; callers add them.
  decode(ids) -> str             control ids (pad/bos/eos) are skipped.
  vocab_size                     number of ids; every id from encode is < vocab_size.
  bos_id / eos_id / pad_id       ints (-1 when the tokenizer has none).
  identity() -> dict             JSON-serializable fingerprint stored in checkpoints:
                                 {"type", "file", "sha256", "vocab_size"}.
  token_byte_lengths() -> int32[vocab_size]
                                 UTF-8 bytes each id contributes to decoded text, so that
                                 bits/byte = sum(nats of targets) / ln(2) / sum(token_byte_lengths[targets]).

Adding a tokenizer family (tiktoken, Hugging Face): subclass `Tokenizer` and add one `_LOADERS` row.
"""

import abc
import functools
import os
from typing import Callable, Iterable, Sequence

import numpy as np

from MaxText.input_pipeline import builtin_corpus


class Tokenizer(abc.ABC):
    """Base class: text <-> ids for one vocabulary loaded from one model file."""

    type_name: str = "abstract"

    def __init__(self, path: str):
        self.path = path
        self._identity: dict | None = None

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids."""

    @property
    @abc.abstractmethod
    def bos_id(self) -> int:
        """Beginning-of-sequence id, or -1."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int:
        """End-of-sequence id, or -1."""

    @property
    @abc.abstractmethod
    def pad_id(self) -> int:
        """Padding id, or -1."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without BOS/EOS."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; pad/bos/eos ids are skipped."""

    @abc.abstractmethod
    def token_byte_lengths(self) -> np.ndarray:
        """int32 array [vocab_size]: UTF-8 bytes each id adds to decoded text (0 for control ids)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts; subclasses may parallelise."""
        return [self.encode(t) for t in texts]

    def identity(self) -> dict:
        """JSON-serializable fingerprint of the vocabulary, stored in checkpoints to catch mismatches."""
        if self._identity is None:
            self._identity = {
                "type": self.type_name,
                "file": os.path.basename(self.path),
                "sha256": builtin_corpus.file_sha256(self.path),
                "vocab_size": int(self.vocab_size),
            }
        return dict(self._identity)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (BPE or unigram).

    Byte accounting: "▁" stands for one space byte; byte-fallback pieces `<0xNN>` are one byte; control pieces
    (pad/bos/eos) are zero; the unknown piece counts the bytes of the surface `decode` prints for it. With
    the shipped model (identity normalisation, no dummy prefix, no whitespace collapsing)
    decode(encode(t)) == t for every string t without U+2581 "▁", so byte counts are exact. Models trained
    with add_dummy_prefix strip one leading space when decoding; for those the count can exceed
    len(decode(ids)) by one byte per decode call whose first piece begins with "▁".
    """

    type_name = "sentencepiece"

    def __init__(self, path: str):
        super().__init__(path)
        import sentencepiece as spm  # pylint: disable=import-outside-toplevel

        self._sp = spm.SentencePieceProcessor(model_file=path)
        self._byte_lengths: np.ndarray | None = None

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self._sp.eos_id())

    @property
    def pad_id(self) -> int:
        return int(self._sp.pad_id())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The C++ batch path spreads the texts over threads and avoids per-call Python overhead.
        return [list(ids) for ids in self._sp.encode(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_byte_lengths(self) -> np.ndarray:
        if self._byte_lengths is None:
            self._byte_lengths = _sentencepiece_byte_lengths(self._sp)
        return self._byte_lengths


def _sentencepiece_byte_lengths(sp) -> np.ndarray:
    sizes = np.zeros(sp.get_piece_size(), dtype=np.int32)
    for i in range(sp.get_piece_size()):
        if sp.is_control(i):
            sizes[i] = 0
        elif sp.is_byte(i):
            sizes[i] = 1
        elif sp.is_unknown(i):
            sizes[i] = len(sp.decode([i]).encode("utf-8"))
        else:
            sizes[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    sizes.setflags(write=False)
    return sizes


_LOADERS: tuple[tuple[Callable[[str], bool], type[Tokenizer]], ...] = (
    (lambda p: p.endswith(".model"), SentencePieceTokenizer),
)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> Tokenizer:
    del mtime_ns  # cache key only: a rewritten file is reloaded
    for matches, cls in _LOADERS:
        if matches(path):
            return cls(path)
    raise ValueError(
        f"tokenizer_path {path!r}: unknown tokenizer format (expected a SentencePiece '.model' file)"
    )


def load_tokenizer(path: str) -> Tokenizer:
    """Loads the tokenizer stored at `path` (cached per process; a changed file is reloaded).

    Raises:
      ValueError: empty path or unrecognised format. FileNotFoundError: no such file.
    """
    if not path:
        raise ValueError("tokenizer_path is empty; set it to a tokenizer model file")
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer_path {path!r} does not exist")
    return _load_cached(path, os.stat(path).st_mtime_ns)
