"""Entry points the training loop calls: `make_train_iterator` and `make_eval_batches` from a `DataConfig`.

A batch is a dict of int32 numpy arrays [global_batch_size // process_count, max_target_length], this host's
rows of the global batch: inputs, inputs_position, inputs_segmentation, targets, targets_segmentation. The
loss counts positions where targets_segmentation != 0. Row conventions are in `packing` (documents) and
`synthetic`.

Documents. Built-in data (dataset_type="builtin"): the documents of `builtin_corpus`, split into train and
eval by a hash of their text. User data (dataset_type="grain" | "hf" | "tfds", read by `sources`): every
record is one document. The eval split is the configured eval files or split when set; otherwise
`eval_fraction` of each train source's records is held out by a hash of (source, record index)
(`builtin_corpus.index_hash_fractions`), which every host knows without reading a record.

Rows. The split's records are dealt to one lane per row of the global batch (see `lanes`); this host reads
and tokenizes (with BOS/EOS as configured) only its lanes' records, once per process (cached), and each lane
packs its own documents. The batches therefore do not depend on the host count, and a state saved by any
number of hosts resumes on any other. `hf_streaming` reads a Hugging Face dataset sequentially instead (see
`streaming`).

Supervised fine-tuning (use_sft, grain and hf): a record is a conversation or a prompt/completion pair,
rendered with the chat template and tokenized with a per-token loss mask (`sft`); the lanes carry the mask
into targets_segmentation, and first_fit keeps every conversation whole.
"""

import dataclasses
import functools
import os

import numpy as np

from MaxText.config.errors import require
from MaxText.input_pipeline import (
    builtin_corpus,
    iterators,
    lanes,
    packing,
    sft,
    sources,
    streaming,
    synthetic,
    tokenizers,
)

DATASET_TYPES = ("builtin", "synthetic", "grain", "hf", "tfds")
USER_TYPES = ("grain", "hf", "tfds")
# The optional packages each user format reads with (checked before any file is opened; see sources.py).
PACKAGES = {"grain": ("grain",), "hf": ("grain", "datasets"), "tfds": ("grain", "tensorflow_datasets")}


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
    use_sft: bool = False  # records are conversations / prompt-completion pairs (see `sft`); grain, hf
    sft_completion_only: bool = True  # only assistant (completion) tokens count in the loss
    sft_overlong: str = "truncate"  # a record over max_target_length + 1 tokens: "truncate" | "drop"
    chat_template: str = ""  # Jinja chat template ("" = the tokenizer's, else chat_template.DEFAULT_TEMPLATE)


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
    parts = split_parts(cfg, "train")
    identity = {
        "dataset_type": cfg.dataset_type,
        "add_bos": cfg.add_bos,
        "add_eos": cfg.add_eos,
        "max_target_length": cfg.max_target_length,
        "packing": cfg.packing,
        "packing_type": cfg.packing_type,
        "data_shuffle_seed": cfg.data_shuffle_seed,
        "records": [[len(p.records), p.weight] for p in parts],  # per source: train records, weight
    }
    if cfg.use_sft:  # only then, so that pretraining states saved before SFT existed still resume
        identity["sft"] = {"completion_only": cfg.sft_completion_only, "overlong": cfg.sft_overlong}
    lo, hi = iterators.host_row_range(cfg.global_batch_size, process_index, process_count)
    lane_set, stats = _cached_lane_sources(cfg, "train", lo, hi)
    return lanes.LaneTrainIterator(lane_set, cfg.global_batch_size, identity, stats)


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
    if cfg.dataset_type == "hf" and cfg.hf_streaming:
        stream = streaming.make_streaming(cfg, "eval", process_index, process_count)
        return [next(stream) for _ in range(num_batches)]
    parts = split_parts(cfg, "eval")
    if not any(len(p.records) for p in parts):
        raise ValueError(f"eval_fraction={cfg.eval_fraction} holds out no documents; set it > 0 for eval")
    lo, hi = iterators.host_row_range(cfg.global_batch_size, process_index, process_count)
    return lanes.eval_batches(_cached_lane_sources(cfg, "eval", lo, hi)[0], num_batches)


def corpus_path(cfg: DataConfig) -> str:
    """The corpus file the builtin dataset reads."""
    return os.path.abspath(cfg.dataset_path or builtin_corpus.BUILTIN_CORPUS_PATH)


def _validate(cfg: DataConfig, process_index: int, process_count: int) -> None:
    if cfg.dataset_type not in DATASET_TYPES:
        raise ValueError(f"dataset_type {cfg.dataset_type!r} is not one of {DATASET_TYPES}")
    for module in PACKAGES.get(cfg.dataset_type, ()):
        require(module, f"dataset_type={cfg.dataset_type!r}")
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
    if cfg.use_sft:
        _validate_sft(cfg)
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


def _validate_sft(cfg: DataConfig) -> None:
    if cfg.dataset_type not in ("grain", "hf") or cfg.hf_streaming:
        raise ValueError(
            "use_sft reads conversations from dataset_type='grain' or 'hf' (not streamed), got "
            f"{cfg.dataset_type!r}{' with hf_streaming' if cfg.hf_streaming else ''}"
        )
    if cfg.sft_overlong not in sft.OVERLONG:
        raise ValueError(f"sft_overlong {cfg.sft_overlong!r} is not one of {sft.OVERLONG}")
    if cfg.tokenize:
        sft.parse_columns(cfg.column)


@dataclasses.dataclass(frozen=True)
class SplitPart:
    """One source of a split: its name, mixture weight and the indices of the split's records in it."""

    name: str  # builtin: "builtin"; grain: the glob; hf / tfds: the split name
    weight: float
    records: np.ndarray  # int64 record indices, in the split's order


def split_parts(cfg: DataConfig, split: str) -> list[SplitPart]:
    """The sources of the "train" or "eval" split and which of their records it holds (reads no record)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if cfg.dataset_type == "builtin":
        docs = builtin_corpus.load_documents(corpus_path(cfg))  # a helpful error when the file is missing
        train, evals = builtin_corpus.split_train_eval(list(docs), cfg.eval_fraction)
        return [SplitPart("builtin", 1.0, train if split == "train" else evals)]
    own_eval = _eval_sources(cfg)
    held_out = not own_eval
    names = own_eval if split == "eval" and own_eval else _train_sources(cfg)
    parts = []
    for k, (name, weight) in enumerate(names):
        num = len(_open_source(cfg, name, split == "eval" and not held_out))
        records = np.arange(num, dtype=np.int64)
        if held_out:
            train, evals = builtin_corpus.split_by_keys(
                builtin_corpus.index_hash_fractions(k, num), cfg.eval_fraction
            )
            records = train if split == "train" else evals
        parts.append(SplitPart(name, weight, records))
    return parts


def lane_sources(
    cfg: DataConfig, split: str, parts: list[SplitPart], own: range, stats: dict | None = None
) -> dict[int, iterators.PackedRowSource]:
    """The PackedRowSource of each lane in `own`, from its records only (see `lanes`).

    stats: with use_sft, filled with `sft.summarize` of the records read (each once).
    """
    num_lanes = cfg.global_batch_size
    if split == "train":  # each source dealt on its own, so that every lane holds every mixture part
        for p in parts:
            if p.records.size == 0:
                raise sources.DataError(f"source {p.name!r}: every record is held out for eval")
        per_part = [
            [p.records[m] for m in lanes.deal(len(p.records), num_lanes, cfg.data_shuffle_seed, k, True)]
            for k, p in enumerate(parts)
        ]
    else:  # all eval records in order
        owner = np.concatenate([np.full(len(p.records), k) for k, p in enumerate(parts)])
        flat = np.concatenate([p.records for p in parts])
        dealt = lanes.deal(len(flat), num_lanes, 0, 0, False)
        per_part = [[flat[m][owner[m] == k] for m in dealt] for k in range(len(parts))]
    encoded = []
    for k, p in enumerate(parts):
        needed = np.unique(np.concatenate([per_part[k][r] for r in own]))
        encoded.append(dict(zip(needed.tolist(), _encode(cfg, p.name, split, needed))))
    if cfg.use_sft and stats is not None:
        stats.update(sft.summarize(e for part in encoded for e in part.values()))
    mixed = split == "train" and len(parts) > 1
    out = {}
    for r in own:
        docs = [encoded[k][i] for k in range(len(parts)) for i in per_part[k][r].tolist()]
        mixture = [(len(per_part[k][r]), p.weight) for k, p in enumerate(parts)] if mixed else None
        try:
            out[r] = iterators.PackedRowSource(
                _token_docs(cfg, docs),
                cfg.max_target_length,
                cfg.packing,
                lanes.lane_seed(cfg.data_shuffle_seed, r),
                cfg.packing_type,
                mixture,
                whole_pieces=cfg.use_sft,
            )
        except ValueError:
            if not cfg.use_sft:
                raise
            drop = cfg.sft_overlong == "drop"
            raise sources.DataError(
                f"use_sft: all {len(docs)} {split} records dealt to row {r} of the batch were dropped (no trained "
                f"token in their first max_target_length+1={cfg.max_target_length + 1} tokens"
                f"{', or longer than that with sft_overlong=drop' if drop else ''}): raise max_target_length"
                f"{', set sft_overlong=truncate' if drop else ''} or use more records"
            ) from None
    return out


def _token_docs(cfg: DataConfig, docs: list) -> packing.TokenizedDocs:
    """TokenizedDocs of `_encode` results (with the loss mask when use_sft)."""
    if cfg.use_sft:
        return packing.TokenizedDocs.from_sequences([e.ids for e in docs], [e.mask for e in docs])
    return packing.TokenizedDocs.from_sequences(docs)


def user_token_docs(cfg: DataConfig, split: str) -> tuple[packing.TokenizedDocs, list | None]:
    """(every document of the split in split order, mixture [(num_docs, weight)] or None); reads them all.

    For tools and tests: training reads only its lanes' records.
    """
    parts = split_parts(cfg, split)
    docs = [ids for p in parts for ids in _encode(cfg, p.name, split, p.records)]
    mixture = [(len(p.records), p.weight) for p in parts]
    return _token_docs(cfg, docs), (mixture if len(mixture) > 1 else None)


def builtin_token_docs(cfg: DataConfig, split: str) -> packing.TokenizedDocs:
    """Token sequences (with BOS/EOS as configured) of the builtin "train" or "eval" documents."""
    return user_token_docs(cfg, split)[0]


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


def _where(cfg: DataConfig, name: str, own_eval: bool) -> str:
    """How error messages name a source."""
    if cfg.dataset_type == "grain":
        return f"{'grain_eval_files' if own_eval else 'grain_train_files'}: {name!r}"
    if cfg.dataset_type == "hf":
        return f"hf_path={cfg.hf_path!r} ({(cfg.eval_files if own_eval and cfg.eval_files else cfg.data_files) or name})"
    return f"dataset_name={cfg.dataset_name!r} split {name!r}"


@functools.lru_cache(maxsize=8)
def _open_source(cfg: DataConfig, name: str, own_eval: bool):
    """The random-access record source `name` (a glob, or a split); opening reads metadata, not records."""
    if cfg.dataset_type == "grain":
        key = "grain_eval_files" if own_eval else "grain_train_files"
        if cfg.use_sft and not cfg.tokenize:  # pre-tokenized SFT: Parquet reads the loss mask beside the ids
            source = sources.grain_source(name, key, cfg.column, optional=(sft.MASK_COLUMN,))
        else:
            source = sources.grain_source(name, key, cfg.column)
    elif cfg.dataset_type == "hf":
        source = sources.hf_source(
            cfg.hf_path, cfg.eval_files if own_eval and cfg.eval_files else cfg.data_files, name
        )
    else:
        source = sources.tfds_source(cfg.dataset_name, cfg.dataset_path, name)
    if len(source) == 0:
        raise sources.DataError(f"{_where(cfg, name, own_eval)}: the dataset has no records")
    return source


def _encode(cfg: DataConfig, name: str, split: str, records: np.ndarray) -> list:
    """Per record of `records` of source `name`, reading each record once: its token ids (with BOS/EOS as
    configured), or with use_sft its `sft.Example` (ids and loss mask)."""
    unique, where = np.unique(records, return_inverse=True)
    own_eval = split == "eval" and bool(_eval_sources(cfg)) if cfg.dataset_type in USER_TYPES else False
    if cfg.dataset_type == "builtin":
        tokenizer = tokenizers.load_tokenizer(cfg.tokenizer_path)
        texts = builtin_corpus.load_documents(corpus_path(cfg))
        prefix = [tokenizer.bos_id] if cfg.add_bos else []
        suffix = [tokenizer.eos_id] if cfg.add_eos else []
        ids = [
            np.concatenate([prefix, e, suffix]).astype(np.int32)
            for e in tokenizer.encode_batch([texts[i] for i in unique.tolist()])
        ]
    else:
        encoder = _encoder(cfg, _where(cfg, name, own_eval))
        ids = sources.encode_records(_open_source(cfg, name, own_eval), unique, encoder, cfg.worker_count)
    tokens = [e.ids for e in ids] if cfg.use_sft else ids
    top = max((int(d.max()) for d in tokens if d.size), default=-1)
    if top >= cfg.vocab_size or min((int(d.min()) for d in tokens if d.size), default=0) < 0:
        raise sources.DataError(
            f"{_where(cfg, name, own_eval)}: token ids must lie in [0, vocab_size={cfg.vocab_size}), found {top}"
        )
    return [ids[i] for i in where.reshape(-1).tolist()]


def _encoder(cfg: DataConfig, where: str):
    """record -> token ids (`sources.RecordEncoder`), or with use_sft -> `sft.Example`."""
    if not cfg.use_sft:
        return sources.RecordEncoder(cfg.tokenizer_path, cfg.column, cfg.tokenize, cfg.add_bos, cfg.add_eos)
    return sft.SftEncoder(
        tokenizer_path=cfg.tokenizer_path,
        template=cfg.chat_template,
        column=cfg.column,
        tokenize=cfg.tokenize,
        add_bos=cfg.add_bos,
        add_eos=cfg.add_eos,
        completion_only=cfg.sft_completion_only,
        overlong=cfg.sft_overlong,
        max_target_length=cfg.max_target_length,
        where=where,
    )


@functools.lru_cache(maxsize=4)
def _cached_lane_sources(
    cfg: DataConfig, split: str, lo: int, hi: int
) -> tuple[dict[int, iterators.PackedRowSource], dict]:
    """(`lane_sources` of lanes [lo, hi), their SFT counts or {}), kept for the life of the process (train
    and eval of a run, or repeated iterators in tests); the iterators share them, so the tokens are held
    once."""
    stats: dict = {}
    return lane_sources(cfg, split, split_parts(cfg, split), range(lo, hi), stats), stats


def clear_caches() -> None:
    """Forgets opened sources and lanes' tokens (they are otherwise kept for the life of the process)."""
    _open_source.cache_clear()
    _cached_lane_sources.cache_clear()
