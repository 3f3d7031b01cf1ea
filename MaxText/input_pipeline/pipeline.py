"""Entry points the training loop calls: `make_train_iterator` and `make_eval_batches` from a `DataConfig`.

A batch is a dict of int32 numpy arrays [global_batch_size // process_count, max_target_length], this host's
rows of the global batch (see `iterators`): inputs, inputs_position, inputs_segmentation, targets,
targets_segmentation. The loss counts positions where targets_segmentation != 0. Row conventions are in
`packing` (builtin) and `synthetic`.

Built-in data (dataset_type="builtin"): the documents of `builtin_corpus`, tokenized once per process (0.2 s
of encoding for the 5 MB corpus, under 1 s with reading and splitting, so no disk cache) with BOS/EOS added
as configured, split into train and eval by document hash. Eval rows are the eval documents in a fixed
order, packed like train rows but never shuffled; when `num_batches` needs more rows than the eval split has,
rows repeat from the first one (whole split, then again), so later batches duplicate earlier ones.
"""

import dataclasses
import functools
import os

import numpy as np

from MaxText.input_pipeline import builtin_corpus, iterators, packing, synthetic, tokenizers

DATASET_TYPES = ("builtin", "synthetic")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What defines the data stream. `dataset_path` "" means the shipped corpus (builtin only)."""

    dataset_type: str  # "builtin" | "synthetic"
    tokenizer_path: str  # absolute path to the SentencePiece model ("" for synthetic)
    max_target_length: int  # T, row length
    global_batch_size: int  # rows per step summed over all hosts
    vocab_size: int  # model vocab size; must be >= the tokenizer's
    data_shuffle_seed: int
    eval_fraction: float = 0.02  # share of documents held out for eval (builtin)
    add_bos: bool = True
    add_eos: bool = True
    packing: bool = True
    dataset_path: str = ""  # builtin corpus file; "" = assets/shakespeare/shakespeare.txt.gz


def make_train_iterator(
    cfg: DataConfig, process_index: int = 0, process_count: int = 1
) -> iterators.TrainIterator:
    """Infinite iterator of this host's share of each global training batch; see `TrainIterator`."""
    _validate(cfg, process_index, process_count)
    if cfg.dataset_type == "synthetic":
        return synthetic.SyntheticTrainIterator(
            cfg.data_shuffle_seed,
            cfg.max_target_length,
            cfg.vocab_size,
            cfg.global_batch_size,
            process_index,
            process_count,
        )
    source = iterators.PackedRowSource(
        builtin_token_docs(cfg, "train"), cfg.max_target_length, cfg.packing, cfg.data_shuffle_seed
    )
    identity = {"dataset_type": cfg.dataset_type, "add_bos": cfg.add_bos, "add_eos": cfg.add_eos}
    return iterators.PackedTrainIterator(
        source, cfg.global_batch_size, process_index, process_count, identity
    )


def make_eval_batches(
    cfg: DataConfig, num_batches: int, process_index: int = 0, process_count: int = 1
) -> list[dict[str, np.ndarray]]:
    """The first `num_batches` eval batches (this host's rows); the same list on every call."""
    _validate(cfg, process_index, process_count)
    if num_batches < 0:
        raise ValueError(f"num_batches must be >= 0, got {num_batches}")
    if cfg.dataset_type == "synthetic":
        lo, hi = iterators.host_row_range(cfg.global_batch_size, process_index, process_count)
        return [
            synthetic.synthetic_batch(
                cfg.data_shuffle_seed,
                synthetic.EVAL_STREAM,
                step,
                range(lo, hi),
                cfg.max_target_length,
                cfg.vocab_size,
            )
            for step in range(num_batches)
        ]
    docs = builtin_token_docs(cfg, "eval")
    if not docs:
        raise ValueError(f"eval_fraction={cfg.eval_fraction} holds out no documents; set it > 0 for eval")
    source = iterators.PackedRowSource(docs, cfg.max_target_length, cfg.packing, cfg.data_shuffle_seed)
    return iterators.eval_batches_from_source(
        source, cfg.global_batch_size, num_batches, process_index, process_count
    )


def corpus_path(cfg: DataConfig) -> str:
    """The corpus file the builtin dataset reads."""
    return os.path.abspath(cfg.dataset_path or builtin_corpus.BUILTIN_CORPUS_PATH)


def _validate(cfg: DataConfig, process_index: int, process_count: int) -> None:
    if cfg.dataset_type not in DATASET_TYPES:
        raise ValueError(f"dataset_type {cfg.dataset_type!r} is not one of {DATASET_TYPES}")
    if cfg.max_target_length < 1:
        raise ValueError(f"max_target_length must be >= 1, got {cfg.max_target_length}")
    if cfg.vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {cfg.vocab_size}")
    if cfg.data_shuffle_seed < 0:
        raise ValueError(f"data_shuffle_seed must be >= 0, got {cfg.data_shuffle_seed}")
    iterators.host_row_range(cfg.global_batch_size, process_index, process_count)
    if cfg.dataset_type == "builtin":
        if not 0.0 <= cfg.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {cfg.eval_fraction}")
        tokenizer = tokenizers.load_tokenizer(cfg.tokenizer_path)
        if cfg.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's vocabulary "
                f"{tokenizer.vocab_size} ({cfg.tokenizer_path})"
            )
        for flag, token_id, name in (
            (cfg.add_bos, tokenizer.bos_id, "bos"),
            (cfg.add_eos, tokenizer.eos_id, "eos"),
        ):
            if flag and token_id < 0:
                raise ValueError(f"add_{name}=True but tokenizer {cfg.tokenizer_path} has no {name} id")


def builtin_token_docs(cfg: DataConfig, split: str) -> packing.TokenizedDocs:
    """Token sequences (with BOS/EOS as configured) of the builtin "train" or "eval" documents.

    Useful beyond the iterators, e.g. to count the eval split's tokens or bytes.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    path = corpus_path(cfg)
    docs = builtin_corpus.load_documents(path)  # raises a helpful error when the corpus file is missing
    tokenizer = tokenizers.load_tokenizer(cfg.tokenizer_path)
    encoded = _encoded_documents(path, os.stat(path).st_mtime_ns, tokenizer)
    train, evals = builtin_corpus.split_train_eval(docs, cfg.eval_fraction)
    prefix = [tokenizer.bos_id] if cfg.add_bos else []
    suffix = [tokenizer.eos_id] if cfg.add_eos else []
    return packing.TokenizedDocs.from_sequences(
        [
            np.concatenate([prefix, encoded[i], suffix]).astype(np.int32)
            for i in (train if split == "train" else evals)
        ]
    )


@functools.lru_cache(maxsize=4)
def _encoded_documents(path: str, mtime_ns: int, tokenizer: tokenizers.Tokenizer) -> tuple[np.ndarray, ...]:
    """Token ids (no BOS/EOS) of every document of the corpus at `path`, cached per (file, tokenizer)."""
    del mtime_ns  # cache key only
    docs = builtin_corpus.load_documents(path)
    return tuple(np.asarray(ids, dtype=np.int32) for ids in tokenizer.encode_batch(list(docs)))
