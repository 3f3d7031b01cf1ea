"""Checkpointable batch iterators, per-host row ranges, and packed rows of tokenized documents per epoch.

`PackedRowSource` turns a set of tokenized documents into rows: epoch e visits every piece once, in a random
order drawn from (seed, e) (`epoch_order`), and packs them (see `packing`). A row is addressed by (epoch, row): the layout of an epoch is
recomputed from the seed in milliseconds when needed, so only that position needs saving. `lanes` builds one
such source per row of the global batch.
"""

import abc
import functools
import hashlib

import numpy as np

from MaxText.input_pipeline import packing


class TrainIterator(abc.ABC):
    """Infinite iterator of this host's share of the global batches, with a JSON-serializable position.

    After `set_state(s)` it yields exactly the batches that the iterator that returned `s` from `get_state()`
    yielded after that call.
    """

    def __iter__(self) -> "TrainIterator":
        return self

    @abc.abstractmethod
    def __next__(self) -> dict[str, np.ndarray]:
        """Next batch: dict of int32 [global_batch_size // process_count, max_target_length]."""

    @abc.abstractmethod
    def get_state(self) -> dict:
        """Small JSON-serializable position in the stream (save it with the model checkpoint)."""

    @abc.abstractmethod
    def set_state(self, state: dict) -> None:
        """Moves to the position `state` (from get_state of an iterator over the same stream)."""


def check_identity(identity: dict, state: dict) -> None:
    """Refuses a saved state whose stream-defining fields differ from `identity` (naming each one)."""
    mismatched = sorted(k for k in identity if state.get(k) != identity[k])
    if mismatched:
        details = ", ".join(f"{k}: saved {state.get(k)!r} vs now {identity[k]!r}" for k in mismatched)
        raise ValueError(f"data iterator state is from a different data stream ({details})")


def host_row_range(global_batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """Rows [lo, hi) of each global batch that belong to `process_index`; validates the split."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must be in [0, process_count={process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of "
            f"process_count {process_count}"
        )
    per_host = global_batch_size // process_count
    return process_index * per_host, (process_index + 1) * per_host


@functools.lru_cache(maxsize=64)
def epoch_order(num_pieces: int, seed: int, epoch: int) -> np.ndarray:
    """The piece order of `epoch`: a permutation of range(num_pieces), a pure function of the arguments.

    numpy's PCG64 permutation under SeedSequence([seed, epoch]). (grain's index_shuffle, used before lanes,
    costs 0.1 ms per index on large ranges and ~20 ms per index on the small ranges of a lane.) Cached
    (read-only result): a mixture asks for the same source epoch from consecutive mixed epochs.
    """
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(num_pieces)
    order.flags.writeable = False
    return order


def docs_fingerprint(docs: packing.TokenizedDocs) -> str:
    """16 hex digits of sha256 of the tokens, document lengths and loss mask, when there is one (changes with
    tokenizer, split, BOS, chat template, sft_train_on_completion_only...)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(docs.tokens, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(docs.lengths, dtype="<i8").tobytes())
    if docs.loss_mask is not None:  # absent for pretraining, whose fingerprints stay as they were
        h.update(b"loss_mask")
        h.update(np.ascontiguousarray(docs.loss_mask, dtype="i1").tobytes())
    return h.hexdigest()[:16]


class PackedRowSource:  # pylint: disable=too-many-instance-attributes
    """Rows of tokenized documents: shuffled per epoch (train) or in the given order (eval), then packed.

    Mixtures. With `mixture` = [(num_docs, weight), ...] the documents are several sources one after another
    (source k is the next num_docs documents). A mixed epoch has as many pieces as all sources together, of
    which source k contributes round(w_k / sum(w) * total) (at least one), taken from its own endless stream
    of shuffled epochs (so a small source with a large weight repeats, and a large one with a small weight
    spreads over several mixed epochs); the mixed epoch is then shuffled and packed. Weights therefore hold
    exactly per mixed epoch, counted in pieces (documents cut to at most T pairs), not in tokens.
    """

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self,
        docs: packing.TokenizedDocs,
        max_target_length: int,
        packing_enabled: bool,
        seed: int,
        packing_type: str = "first_fit",
        mixture: list[tuple[int, float]] | None = None,
        whole_pieces: bool = False,
    ):
        """whole_pieces: first_fit never splits a piece across rows (`packing.pack_rows`)."""
        if max_target_length < 1:
            raise ValueError(f"max_target_length must be >= 1, got {max_target_length}")
        self.docs = docs
        self.max_target_length = max_target_length
        self.packing = packing_enabled
        self.packing_type = packing_type
        self.seed = seed
        self.whole_pieces = whole_pieces
        self.pieces = packing.make_pieces(docs, max_target_length)
        if not self.pieces:
            raise ValueError("the data split has no document with at least two tokens; nothing to train on")
        self.mixture = self._mixture_counts(mixture) if mixture and len(mixture) > 1 else None
        self._layouts: dict[int, packing.RowLayout] = {}

    def _mixture_counts(self, mixture: list[tuple[int, float]]) -> list[tuple[int, int, int]]:
        """(first piece, number of pieces, pieces per mixed epoch) of each source."""
        doc_ends = np.cumsum([n for n, _ in mixture])
        if doc_ends[-1] != len(self.docs):
            raise ValueError(f"mixture covers {doc_ends[-1]} documents, the data has {len(self.docs)}")
        # Pieces are in document order; a source's pieces start in its token range.
        end = len(self.docs.tokens) + 1
        token_bounds = [0] + [int(self.docs.starts[e]) if e < len(self.docs) else end for e in doc_ends]
        piece_bounds = np.searchsorted(self.pieces.starts, token_bounds)
        total = len(self.pieces)
        weight_sum = sum(w for _, w in mixture)
        counts = []
        for k, (_, weight) in enumerate(mixture):
            lo, hi = int(piece_bounds[k]), int(piece_bounds[k + 1])
            if hi == lo:
                raise ValueError(f"mixture source {k} has no document with at least two tokens")
            counts.append((lo, hi - lo, max(1, round(weight / weight_sum * total))))
        return counts

    def epoch_pieces(self, epoch: int) -> np.ndarray:
        """Piece indices of shuffled epoch `epoch`, in visiting order."""
        if self.mixture is None:
            return epoch_order(len(self.pieces), self.seed, epoch)
        parts = []
        for k, (first, num, count) in enumerate(self.mixture):
            source_seed = int(np.random.SeedSequence([self.seed, k + 1]).generate_state(1)[0])
            position = np.arange(epoch * count, (epoch + 1) * count, dtype=np.int64)
            source_epoch = position // num
            out = np.empty(count, dtype=np.int64)
            for e in np.unique(source_epoch).tolist():
                chosen = source_epoch == e
                out[chosen] = first + epoch_order(num, source_seed, e)[position[chosen] % num]
            parts.append(out)
        mixed = np.concatenate(parts)
        return mixed[epoch_order(len(mixed), self.seed, epoch)]

    def layout(self, epoch: int) -> packing.RowLayout:
        """Row layout of a shuffled epoch (the two most recent are cached)."""
        if epoch not in self._layouts:
            if len(self._layouts) >= 2:
                del self._layouts[min(self._layouts)]
            self._layouts[epoch] = self._pack(self.epoch_pieces(epoch))
        return self._layouts[epoch]

    def unshuffled_layout(self) -> packing.RowLayout:
        """Row layout with the pieces in document order (eval)."""
        return self._pack(np.arange(len(self.pieces), dtype=np.int64))

    def _pack(self, order: np.ndarray) -> packing.RowLayout:
        return packing.pack_rows(
            order, self.pieces, self.max_target_length, self.packing, self.packing_type, self.whole_pieces
        )

    def materialize(self, rows: list[tuple[packing.RowLayout, int]]) -> dict[str, np.ndarray]:
        """Batch whose row k is row rows[k][1] of layout rows[k][0]."""
        batch = packing.empty_batch(len(rows), self.max_target_length)
        for k, (layout, r) in enumerate(rows):
            self.fill_row(batch, k, layout, r)
        return batch

    def fill_row(self, batch: dict[str, np.ndarray], k: int, layout: packing.RowLayout, r: int) -> None:
        """Writes row r of `layout` into row k of `batch` (with the documents' loss mask, if any)."""
        packing.fill_row(batch, k, *layout.row(r), self.docs.tokens, self.docs.loss_mask)
