"""Streaming Hugging Face datasets (hf_streaming=true): records read one by one, never all in memory.

Global row stream. Epoch e reads the split as a `datasets.IterableDataset` shuffled with
`shuffle(seed=<from (data_shuffle_seed, e)>, buffer_size=SHUFFLE_BUFFER)` (shard order and a buffer of
records; deterministic for a given seed). Each record is encoded like in-memory data (`sources.RecordEncoder`).
Rows are cut in order: packing_type=concat lays the documents' next-token pairs end to end and cuts every T
positions (a document crossing a cut continues in the next row, positions restarting at 0; rows may span an
epoch end); packing=false gives each row up to T pairs of one document. Row conventions are `packing`'s.

Held-out eval. Without hf_eval_files / eval_split, a record whose token ids hash below eval_fraction (the
builtin rule) is an eval document and is skipped by train, so train and eval never share a document.

State {"epoch", "record", "offset"}: the next row starts at pair `offset` of record `record` (counting every
record of the epoch's shuffled order). Every host reads the whole stream and keeps its rows [i*B/P,
(i+1)*B/P) of each global batch, so the stream does not depend on the host count and resuming with another
host count or batch size neither repeats nor skips rows. Resuming replays the epoch up to `record` (reading,
not encoding, the skipped records): exact, at a cost linear in the position within the epoch.
"""

import json

import numpy as np

from MaxText.input_pipeline import builtin_corpus, iterators, packing, sources

SHUFFLE_BUFFER = 1024


class StreamingTrainIterator(iterators.TrainIterator):  # pylint: disable=too-many-instance-attributes
    """Rows cut from a streamed split, in order; see the module docstring."""

    def __init__(
        self, cfg, split: str, files: str, keep: str, process_index: int = 0, process_count: int = 1
    ):
        """keep: "all" (shuffled), "eval_all" (in order), "train" (shuffled, held-out documents dropped) or
        "eval" (in order, only held-out documents)."""
        self._cfg, self._split, self._files, self._keep = cfg, split, files, keep
        self._lo, self._hi = iterators.host_row_range(cfg.global_batch_size, process_index, process_count)
        self._shuffle = keep in ("all", "train")
        self._encoder = sources.RecordEncoder(
            cfg.tokenizer_path, cfg.column, cfg.tokenize, cfg.add_bos, cfg.add_eos
        )
        self._identity = {
            "dataset_type": "hf_streaming",
            "hf_path": cfg.hf_path,
            "files": files,
            "split": split,
            "column": cfg.column,
            "max_target_length": cfg.max_target_length,
            "packing": cfg.packing,
            "data_shuffle_seed": cfg.data_shuffle_seed,
            "add_bos": cfg.add_bos,
            "add_eos": cfg.add_eos,
        }
        json.dumps(self._identity)
        self._open(0, 0, 0)

    def _open(self, epoch: int, record: int, offset: int) -> None:
        self._epoch, self._record, self._offset = epoch, record, offset
        stream = sources.hf_source(self._cfg.hf_path, self._files, self._split, streaming=True)
        if self._shuffle:
            seed = int(np.random.SeedSequence([self._cfg.data_shuffle_seed, epoch]).generate_state(1)[0])
            stream = stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
        self._records = iter(stream.skip(record) if record else stream)
        self._doc = None  # token ids of record self._record, once encoded
        self._empty_epoch = record == 0

    def _current_doc(self) -> np.ndarray:
        """Token ids of the document at the position, advancing past records that have no pairs to give."""
        while self._doc is None:
            try:
                ids = self._encoder(next(self._records))
            except StopIteration:
                if self._empty_epoch:
                    hint = (
                        f" in the held-out eval_split_fraction={self._cfg.eval_fraction} (set hf_eval_files or "
                        "eval_split, or raise it)"
                        if self._keep == "eval"
                        else ""
                    )
                    raise sources.DataError(
                        f"hf_path={self._cfg.hf_path!r}: the streamed data has no document with at least two "
                        f"tokens{hint}"
                    ) from None
                self._open(self._epoch + 1, 0, 0)
                continue
            if self._wanted(ids) and len(ids) - 1 > self._offset:
                self._doc = ids
                self._empty_epoch = False
            else:
                self._record, self._offset = self._record + 1, 0
        return self._doc

    def _wanted(self, ids: np.ndarray) -> bool:
        if self._keep in ("all", "eval_all"):
            return True
        held_out = builtin_corpus.document_hash_fraction(ids.tobytes()) < self._cfg.eval_fraction
        return held_out == (self._keep == "eval")

    def _next_row(self) -> list[np.ndarray]:
        """The token slices (inputs plus the last target) of the segments of the next row."""
        free, segments = self._cfg.max_target_length, []
        while free:
            doc = self._current_doc()
            take = min(free, len(doc) - 1 - self._offset)
            segments.append(doc[self._offset : self._offset + take + 1])
            self._offset += take
            free -= take
            if self._offset == len(doc) - 1:
                self._record, self._offset, self._doc = self._record + 1, 0, None
            if not self._cfg.packing:
                break
        return segments

    def __next__(self) -> dict[str, np.ndarray]:
        batch = packing.empty_batch(self._hi - self._lo, self._cfg.max_target_length)
        for row in range(self._cfg.global_batch_size):
            segments = self._next_row()
            if self._lo <= row < self._hi:
                lengths = np.array([len(s) for s in segments], dtype=np.int64)
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
                packing.fill_row(batch, row - self._lo, starts, lengths - 1, np.concatenate(segments))
        return batch

    def get_state(self) -> dict:
        return {"epoch": self._epoch, "record": self._record, "offset": self._offset, **self._identity}

    def set_state(self, state: dict) -> None:
        iterators.check_identity(self._identity, state)
        epoch, record, offset = (int(state[k]) for k in ("epoch", "record", "offset"))
        if min(epoch, record, offset) < 0:
            raise ValueError(f"data iterator state out of range: {state!r}")
        self._open(epoch, record, offset)


def make_streaming(cfg, split: str, process_index: int, process_count: int) -> StreamingTrainIterator:
    """The train ("train") or eval ("eval") stream of an hf_streaming config."""
    own_eval = bool(cfg.eval_files or cfg.eval_split)
    if split == "train":
        return StreamingTrainIterator(
            cfg, cfg.train_split, cfg.data_files, "all" if own_eval else "train", process_index, process_count
        )
    if cfg.eval_files:
        return StreamingTrainIterator(
            cfg, cfg.train_split, cfg.eval_files, "eval_all", process_index, process_count
        )
    if cfg.eval_split:
        return StreamingTrainIterator(
            cfg, cfg.eval_split, cfg.data_files, "eval_all", process_index, process_count
        )
    return StreamingTrainIterator(cfg, cfg.train_split, cfg.data_files, "eval", process_index, process_count)
