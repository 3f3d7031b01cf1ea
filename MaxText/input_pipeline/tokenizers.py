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
  add_bos / add_eos              whether encode_with_special_tokens adds BOS / EOS by default: as the tokenizer
                                 files state (tokenizer_config.json add_bos_token, else what a tokenizer.json's
                                 post-processor adds), else the model family's default (its spec's
                                 add_bos_eos, passed as `load_tokenizer(path, defaults)`), else BOS when
                                 there is one.
  encode_with_special_tokens(text, add_bos=None, add_eos=None)
                                 encode plus BOS/EOS; None follows the family default, a bool overrides it.

Families: SentencePiece (`*.model`), Hugging Face `tokenizer.json` (through the `tokenizers` library) and
tiktoken BPE ranks (`*.tiktoken`, or a `tokenizer.model` holding "base64 rank" lines, as Llama 3 ships),
built from the local file and never downloaded. `load_tokenizer(path)` tells them apart by name and content.
Special tokens (BOS/EOS/pad, add_bos_token/add_eos_token) come from a `tokenizer_config.json` or
`special_tokens_map.json` beside the file when present. Adding a family: subclass `Tokenizer` and add one
`_LOADERS` row.
"""

import abc
import base64
import functools
import json
import os
import re
from typing import Callable, Iterable, Sequence

import numpy as np

from MaxText.config.errors import require
from MaxText.input_pipeline import builtin_corpus


class Tokenizer(abc.ABC):
    """Base class: text <-> ids for one vocabulary loaded from one model file."""

    type_name: str = "abstract"

    def __init__(self, path: str, defaults: tuple | None = None):
        # (add_bos, add_eos) of the model family, where the tokenizer files are silent (None: no family).
        self.path, self.defaults = path, defaults
        self._identity: dict | None = None
        # (add_bos, add_eos) as the tokenizer files state them; None where they are silent.
        self._stated: tuple = (None, None)

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

    def _default(self, k: int, token_id: int, generic: bool) -> bool:
        stated = self._stated[k]
        if stated is None:
            stated = self.defaults[k] if self.defaults else generic
        return bool(stated) and token_id >= 0

    @property
    def add_bos(self) -> bool:
        """Whether BOS is prepended by default: as the files state, else the family's default, else when the
        tokenizer has a BOS (the SentencePiece/Llama convention)."""
        return self._default(0, self.bos_id, True)

    @property
    def add_eos(self) -> bool:
        """Whether EOS is appended by default: as the files state, else the family's default, else not."""
        return self._default(1, self.eos_id, False)

    def encode_with_special_tokens(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None):
        """Ids of `text` with BOS/EOS as the family adds them; a bool add_bos/add_eos overrides the default."""
        bos = self.add_bos if add_bos is None else add_bos
        eos = self.add_eos if add_eos is None else add_eos
        return (
            ([self.bos_id] if bos and self.bos_id >= 0 else [])
            + self.encode(text)
            + ([self.eos_id] if eos and self.eos_id >= 0 else [])
        )

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

    def __init__(self, path: str, defaults: tuple | None = None):
        super().__init__(path, defaults)
        spm = require("sentencepiece", f"tokenizer_path={path!r} (a SentencePiece model)")
        self._sp = spm.SentencePieceProcessor(model_file=path)
        config = _special_token_config(os.path.dirname(path))
        self._stated = (config.get("add_bos_token"), config.get("add_eos_token"))
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


def _special_token_config(directory: str) -> dict:
    """tokenizer_config.json merged over special_tokens_map.json from `directory` ({} when neither exists)."""
    out = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                out.update(json.load(f))
    return out


def _token_content(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


# Special-token names to look for when no tokenizer_config.json names them.
_GUESSES = {
    "bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
    "eos": ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"),
    "pad": ("<pad>", "[PAD]", "<|finetune_right_pad_id|>"),
}


def _special_ids(config: dict, lookup: Callable[[str], int | None]) -> dict:
    """{"bos", "eos", "pad"} -> id (-1 when absent): named in the config, else the first known name found."""
    out = {}
    for kind, guesses in _GUESSES.items():
        named = _token_content(config.get(f"{kind}_token"))
        candidates = (named,) if named else guesses
        ids = [lookup(c) for c in candidates if c]
        out[kind] = next((i for i in ids if i is not None), -1)
    return out


def _bytes_to_unicode() -> dict:
    """GPT-2 byte-level BPE's reversible map of bytes to printable characters (for byte accounting)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class HuggingFaceTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` through the `tokenizers` library: the same ids as transformers.

    BOS/EOS defaults are what the file's post-processor adds (probed), unless tokenizer_config.json sets
    add_bos_token / add_eos_token. Special tokens in the text are recognised, as in transformers.
    """

    type_name = "huggingface"

    def __init__(self, path: str, defaults: tuple | None = None):
        super().__init__(path, defaults)
        hf_tokenizers = require("tokenizers", f"tokenizer_path={path!r} (a Hugging Face tokenizer.json)")
        self._tok = hf_tokenizers.Tokenizer.from_file(path)
        with open(path, encoding="utf-8") as f:
            self._spec = json.load(f)
        config = _special_token_config(os.path.dirname(path))
        self._ids = _special_ids(config, self._tok.token_to_id)
        plain = self._tok.encode("a", add_special_tokens=False).ids
        full = self._tok.encode("a", add_special_tokens=True).ids
        self._stated = (
            bool(config.get("add_bos_token", full[:1] == [self._ids["bos"]] != plain[:1])),
            bool(config.get("add_eos_token", full[-1:] == [self._ids["eos"]] != plain[-1:])),
        )
        self._vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1
        self._byte_lengths: np.ndarray | None = None

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        control = {self.bos_id, self.eos_id, self.pad_id}
        return self._tok.decode([int(i) for i in ids if int(i) not in control], skip_special_tokens=False)

    def token_byte_lengths(self) -> np.ndarray:
        if self._byte_lengths is None:
            self._byte_lengths = self._compute_byte_lengths()
        return self._byte_lengths

    def _compute_byte_lengths(self) -> np.ndarray:
        """Byte-level vocabularies map characters back to bytes; SentencePiece-style ones count "▁" as a
        space and byte-fallback pieces <0xNN> as one byte. Special tokens count zero."""
        sizes = np.zeros(self.vocab_size, dtype=np.int32)
        added = self._tok.get_added_tokens_decoder()
        byte_level = "ByteLevel" in json.dumps(self._spec.get("decoder"))
        to_byte = {c: b for b, c in _bytes_to_unicode().items()}
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            if i in added and added[i].special:
                continue
            if i in added:
                sizes[i] = len(token.encode("utf-8"))
            elif byte_level:
                sizes[i] = sum(1 if c in to_byte else len(c.encode("utf-8")) for c in token)
            elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                sizes[i] = 1
            else:
                sizes[i] = len(token.replace("\u2581", " ").encode("utf-8"))
        sizes.setflags(write=False)
        return sizes


# Llama 3's pre-tokenizer split pattern and special tokens (256 ids right after the BPE ranks).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_NAMED = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>",
)  # fmt: skip
_LLAMA3_NUM_SPECIAL = 256


def read_tiktoken_ranks(path: str) -> dict:
    """{token bytes: rank} from a tiktoken BPE file ("<base64 token> <rank>" per line)."""
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


class TiktokenTokenizer(Tokenizer):
    """tiktoken BPE built from a local rank file (never downloaded), with Llama 3's split pattern.

    Special tokens: the `added_tokens_decoder` of a tokenizer_config.json beside the file, else Llama 3's 256.
    """

    type_name = "tiktoken"

    def __init__(self, path: str, defaults: tuple | None = None):
        super().__init__(path, defaults)
        tiktoken = require("tiktoken", f"tokenizer_path={path!r} (a tiktoken file)")
        ranks = read_tiktoken_ranks(path)
        config = _special_token_config(os.path.dirname(path))
        specials = {
            _token_content(t): int(i)
            for i, t in (config.get("added_tokens_decoder") or {}).items()
            if not isinstance(t, dict) or t.get("special", True)
        }
        if not specials:
            names = list(_LLAMA3_NAMED) + [
                f"<|reserved_special_token_{k}|>"
                for k in range(2, 2 + _LLAMA3_NUM_SPECIAL - len(_LLAMA3_NAMED))
            ]
            specials = {name: len(ranks) + k for k, name in enumerate(names)}
        self._enc = tiktoken.Encoding(
            name=os.path.basename(path),
            pat_str=LLAMA3_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=specials,
        )
        self._specials = set(specials.values())
        self._ids = _special_ids(config, specials.get)
        self._stated = (config.get("add_bos_token"), config.get("add_eos_token"))
        self._byte_lengths: np.ndarray | None = None

    @property
    def vocab_size(self) -> int:
        return int(self._enc.n_vocab)

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special="all")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_batch(list(texts), allowed_special="all")

    def decode(self, ids: Iterable[int]) -> str:
        control = {self.bos_id, self.eos_id, self.pad_id}
        return self._enc.decode([int(i) for i in ids if int(i) not in control])

    def token_byte_lengths(self) -> np.ndarray:
        if self._byte_lengths is None:
            sizes = np.zeros(self.vocab_size, dtype=np.int32)
            for i in range(self.vocab_size):
                if i not in self._specials:
                    try:
                        sizes[i] = len(self._enc.decode_single_token_bytes(i))
                    except KeyError:  # an unused id between the ranks and the special tokens
                        pass
            sizes.setflags(write=False)
            self._byte_lengths = sizes
        return self._byte_lengths


def _is_hf_json(path: str) -> bool:
    if not path.endswith(".json"):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(spec, dict) and "model" in spec


_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+=*\s+\d+\s*$")


def _is_tiktoken(path: str) -> bool:
    if path.endswith(".tiktoken"):
        return True
    with open(path, "rb") as f:
        first = f.readline(1024)
    return bool(_TIKTOKEN_LINE.match(first))


_LOADERS: tuple[tuple[Callable[[str], bool], type[Tokenizer]], ...] = (
    (_is_hf_json, HuggingFaceTokenizer),
    (_is_tiktoken, TiktokenTokenizer),
    (lambda p: p.endswith(".model"), SentencePieceTokenizer),
)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, defaults: tuple | None) -> Tokenizer:
    del mtime_ns  # cache key only: a rewritten file is reloaded
    for matches, cls in _LOADERS:
        if matches(path):
            return cls(path, defaults)
    raise ValueError(
        f"tokenizer_path {path!r}: unknown tokenizer format (expected a SentencePiece '.model', a Hugging Face "
        "'tokenizer.json' or tiktoken ranks ('.tiktoken', or a '.model' of 'base64 rank' lines))"
    )


def load_tokenizer(path: str, defaults: tuple | None = None) -> Tokenizer:
    """Loads the tokenizer stored at `path` (cached per process; a changed file is reloaded).

    defaults: (add_bos, add_eos) of the model family (FamilySpec.add_bos_eos), applied where the tokenizer
      files are silent.

    Raises:
      ValueError: empty path or unrecognised format. FileNotFoundError: no such file. ConfigError: the
        format's package (sentencepiece, tokenizers or tiktoken) is not installed.
    """
    if not path:
        raise ValueError("tokenizer_path is empty; set it to a tokenizer model file")
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer_path {path!r} does not exist")
    return _load_cached(path, os.stat(path).st_mtime_ns, tuple(defaults) if defaults else None)
