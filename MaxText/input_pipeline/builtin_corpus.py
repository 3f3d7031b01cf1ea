"""The built-in corpus: Shakespeare's complete works, split into documents and into train/eval.

File format (`assets/shakespeare/shakespeare.txt.gz`, written by `build_builtin_assets`): gzip-compressed
ASCII text holding the 42 works one after another, sorted by file slug, separated by a line that holds only a
form feed (the bytes "\\n\\f\\n"). Lines carry no trailing spaces and runs of blank lines are collapsed to one
blank line, so a paragraph (a speech, a stage direction, a stanza, a sonnet) is exactly a "\\n\\n"-separated
block. Plain `.txt` files in the same format are read too.

Documents. A work (a play is ~35k tokens) is too coarse for a held-out split with only 42 of them, and too
long to be a natural packing unit, so each work is cut, at paragraph boundaries only, into consecutive
passages of at least `DOC_TARGET_CHARS` characters (~1.2k tokens with the shipped tokenizer); a tail shorter
than half that is merged into the passage before it. This gives 1202 documents of 2.1k-7.2k characters, each
the paragraphs joined by "\\n\\n". Documents never cross works. The rule is part of the data definition:
changing it changes every stream, so it is versioned by `DOC_SPLIT_VERSION`.

Train/eval split. A document is held out for eval when the first 8 bytes of sha256(text), read as a fraction
of 2**64, fall below `eval_fraction`. The split therefore depends on neither the shuffle seed nor the document
order, eval documents never appear in train, and raising the fraction only moves documents from train to eval.
When `0 < eval_fraction` but no document falls below it, the single lowest-hashing document is held out so
that eval is never silently empty. Eval documents are listed in increasing hash order: a fixed order that
mixes works, so evaluating a prefix of the eval set is still a fair sample.
"""

import functools
import gzip
import hashlib
import os

import numpy as np

from MaxText import paths

BUILTIN_CORPUS_PATH = os.path.join(paths.REPO_ROOT, "assets", "shakespeare", "shakespeare.txt.gz")
BUILTIN_TOKENIZER_PATH = os.path.join(paths.REPO_ROOT, "assets", "tokenizer", "shakespeare.model")

WORK_SEPARATOR = "\n\f\n"
PARAGRAPH_SEPARATOR = "\n\n"
DOC_TARGET_CHARS = 4000
DOC_SPLIT_VERSION = 1


def read_corpus_text(path: str) -> str:
    """Returns the whole corpus file as text; `.gz` files are decompressed transparently."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"built-in corpus not found: {path} (rebuild it with "
            "`python3 -m MaxText.input_pipeline.build_builtin_assets`)"
        )
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8")


def split_works(corpus_text: str) -> list[str]:
    """Splits the corpus text into works (in file order), without outer newlines; empty works dropped."""
    return [w.strip("\n") for w in corpus_text.split(WORK_SEPARATOR) if w.strip()]


def split_documents(work: str, target_chars: int = DOC_TARGET_CHARS) -> list[str]:
    """Cuts one work into passages of whole paragraphs, each at least `target_chars` long where possible.

    A passage is closed as soon as it reaches `target_chars` (counting the separators); a final passage
    shorter than `target_chars // 2` is appended to the previous one. Joining the result with "\\n\\n" gives
    the work back (with runs of blank lines normalised).
    """
    docs: list[list[str]] = []
    current: list[str] = []
    size = 0
    for para in work.split(PARAGRAPH_SEPARATOR):
        if not para.strip():
            continue
        current.append(para)
        size += len(para) + len(PARAGRAPH_SEPARATOR)
        if size >= target_chars:
            docs.append(current)
            current, size = [], 0
    if current:
        if docs and size < target_chars // 2:
            docs[-1].extend(current)
        else:
            docs.append(current)
    return [PARAGRAPH_SEPARATOR.join(d) for d in docs]


def document_hash_fraction(text: str | bytes) -> float:
    """A stable pseudo-random number in [0, 1) derived from the document text (or bytes) only."""
    digest = hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_train_eval(docs: list[str], eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train indices in corpus order, eval indices in increasing hash order); see the module docstring."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    return split_by_keys(np.array([document_hash_fraction(d) for d in docs]), eval_fraction)


def split_by_keys(keys: np.ndarray, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The split rule of `split_train_eval`, given each document's hash fraction in [0, 1).

    Returns int64 index arrays (train ascending, eval by increasing key).
    """
    keys = np.asarray(keys, dtype=np.float64)
    held_out = keys < eval_fraction
    if eval_fraction > 0 and not held_out.any() and keys.size:
        held_out[np.argmin(keys)] = True
    evals = np.flatnonzero(held_out)
    evals = evals[np.argsort(keys[evals], kind="stable")]
    return np.flatnonzero(~held_out), evals


def index_hash_fractions(source_ordinal: int, num_records: int) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per record index of one source, without reading the records.

    splitmix64 of (source_ordinal << 40 | index): lets every host know the held-out split of data it never
    reads (the user-data rule; the builtin corpus hashes its text, which every host holds).
    """
    x = (np.uint64(source_ordinal) << np.uint64(40)) + np.arange(num_records, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53


def load_documents(path: str = BUILTIN_CORPUS_PATH) -> tuple[str, ...]:
    """All documents of the corpus at `path`, in corpus order (cached per process until the file changes)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        read_corpus_text(path)  # raises the explanatory FileNotFoundError
    return _load_documents(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_documents(path: str, mtime_ns: int) -> tuple[str, ...]:
    del mtime_ns  # cache key only
    docs: list[str] = []
    for work in split_works(read_corpus_text(path)):
        docs.extend(split_documents(work))
    return tuple(docs)


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
