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

User data (dataset_type="grain" | "hf" | "tfds", read by `sources`): every record is one document, encoded
once per process and held in memory as tokens; rows are then made exactly as for builtin data (shuffled
epochs of pieces, packed), so resume and host-count changes behave identically for every dataset_type. The
eval split is the configured eval files or split when set; otherwise `eval_fraction` of the train documents
is held out by a hash of their token ids (the builtin rule). `hf_streaming` reads a Hugging Face dataset
sequentially instead (see `streaming`).
"""

import dataclasses
import functools
import os

import numpy as np

from MaxText.input_pipeline import (
    builtin_corpus,
    iterators,
    packing,
    sources,
    streaming,
    synthetic,
    tokenizers,
)

DATASET_TYPES = ("builtin", "synthetic", "grain", "hf", "tfds")
USER_TYPES = ("grain", "hf", "tfds")


@dataclasses.dataclass(frozen=True)
class DataConfig:  # pylint: disable=too-many-instance-attributes
    """What defines the data stream. `dataset_path` "" means the shipped corpus (builtin only)."""

    dataset_type: str  # one of DATASET_TYPES
    tokenizer_path: str  # absolute path to the tokenizer model ("" for synthetic)
    max_target_length: int  # T, row length
    global_batch_size: int  # rows per step summed over all hosts
    vocab_size: int  # model vocab size; must be >= the tokenizer's
    data_shuffle_seed: int
    eval_fraction: float = 0.02  # share of documents held out for eval (builtin)
    add_bos: bool = True
    add_eos: bool = True
    packing: bool = True
    dataset_path: str = ""  # builtin corpus file ("" = the shipped one); tfds data_dir
    packing_type: str = "first_fit"  # "first_fit" | "concat" (see `packing`)
    data_files: str = ""  # grain: train globs / mixture; hf: hf_data_files
    eval_files: str = ""  # grain: eval globs; hf: eval data files ("" = hold out eval_fraction)
    column: str = "text"  # record column holding the text or the token ids
    tokenize: bool = True  # False: the column holds token ids
    worker_count: int = 0  # grain worker processes that encode records (0 = in this process)
    hf_path: str = ""  # datasets builder name ("json", "parquet", "text", "arrow") or save_to_disk dir
    hf_streaming: bool = False
    dataset_name: str = ""  # tfds name:version
    train_split: str = "train"
    eval_split: str = ""  # tfds / save_to_disk split for eval ("" = hold out eval_fraction)


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
    if cfg.dataset_type == "hf" and cfg.hf_streaming:
        return streaming.make_streaming(cfg, "train", process_index, process_count)
    if cfg.dataset_type in USER_TYPES:
        docs, mixture = user_token_docs(cfg, "train")
    else:
        docs, mixture = builtin_token_docs(cfg, "train"), None
    source = iterators.PackedRowSource(
        docs, cfg.max_target_length, cfg.packing, cfg.data_shuffle_seed, cfg.packing_type, mixture
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
    docs = (
        user_token_docs(cfg, "eval")[0] if cfg.dataset_type in USER_TYPES else builtin_token_docs(cfg, "eval")
    )
    if not docs:
        raise ValueError(f"eval_fraction={cfg.eval_fraction} holds out no documents; set it > 0 for eval")
    source = iterators.PackedRowSource(
        docs, cfg.max_target_length, cfg.packing, cfg.data_shuffle_seed, cfg.packing_type
    )
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
    if cfg.packing_type not in packing.PACKING_TYPES:
        raise ValueError(f"packing_type {cfg.packing_type!r} is not one of {packing.PACKING_TYPES}")
    if cfg.hf_streaming and cfg.packing and cfg.packing_type != "concat":
        raise ValueError(
            "hf_streaming packs records as they come: set packing_type=concat (or packing=false)"
        )
    if cfg.dataset_type != "synthetic":
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


def user_token_docs(cfg: DataConfig, split: str) -> tuple[packing.TokenizedDocs, list | None]:
    """(documents, mixture [(num_docs, weight)] or None) of the "train" or "eval" split of user data."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    sources_ = _train_sources(cfg)
    own_eval = _eval_sources(cfg)
    held_out = not own_eval
    if split == "eval" and own_eval:
        sources_ = own_eval
    parts, mixture = [], []
    for name, weight in sources_:
        docs = _encoded_source(cfg, name, split == "eval" and not held_out)
        if held_out:
            keys = [builtin_corpus.document_hash_fraction(d.tobytes()) for d in docs]
            train, evals = builtin_corpus.split_by_keys(keys, cfg.eval_fraction)
            docs = tuple(docs[i] for i in (train if split == "train" else evals))
        parts.extend(docs)
        mixture.append((len(docs), weight))
    return packing.TokenizedDocs.from_sequences(parts), (mixture if len(mixture) > 1 else None)


def _train_sources(cfg: DataConfig) -> list[tuple[str, float]]:
    """[(source name, weight)]: a glob per mixture part (grain), else one split of one dataset."""
    if cfg.dataset_type == "grain":
        return sources.parse_mixture(cfg.data_files, "grain_train_files")
    return [(cfg.train_split, 1.0)]


def _eval_sources(cfg: DataConfig) -> list[tuple[str, float]]:
    if cfg.dataset_type == "grain":
        return sources.parse_mixture(cfg.eval_files, "grain_eval_files") if cfg.eval_files else []
    if cfg.dataset_type == "hf" and cfg.eval_files:
        return [(cfg.train_split, 1.0)]  # hf_eval_files loaded under the train split's name
    return [(cfg.eval_split, 1.0)] if cfg.eval_split else []


@functools.lru_cache(maxsize=8)
def _encoded_source(cfg: DataConfig, name: str, is_eval: bool) -> tuple[np.ndarray, ...]:
    """Token ids (with BOS/EOS) of every record of one source, cached per (config, source)."""
    if cfg.dataset_type == "grain":
        key = "grain_eval_files" if is_eval else "grain_train_files"
        where = f"{key}: {name!r}"
        source = sources.grain_source(name, key, cfg.column)
    elif cfg.dataset_type == "hf":
        files = cfg.eval_files if is_eval and cfg.eval_files else cfg.data_files
        where = f"hf_path={cfg.hf_path!r} ({files or name})"
        source = sources.hf_source(cfg.hf_path, files, name)
    else:
        where = f"dataset_name={cfg.dataset_name!r} split {name!r}"
        source = sources.tfds_source(cfg.dataset_name, cfg.dataset_path, name)
    if len(source) == 0:
        raise sources.DataError(f"{where}: the dataset has no records")
    encoder = sources.RecordEncoder(cfg.tokenizer_path, cfg.column, cfg.tokenize, cfg.add_bos, cfg.add_eos)
    docs = tuple(sources.encode_all(source, encoder, cfg.worker_count))
    top = max((int(d.max()) for d in docs if d.size), default=-1)
    if top >= cfg.vocab_size or min((int(d.min()) for d in docs if d.size), default=0) < 0:
        raise sources.DataError(
            f"{where}: token ids must lie in [0, vocab_size={cfg.vocab_size}), found {top}"
        )
    return docs
