"""Cutting tokenized documents into pieces, packing pieces into rows, and turning rows into batch arrays.

Axis legend: R rows, T = max_target_length (positions per row).

Row convention. A document is a token sequence d[0..n-1] (BOS and EOS already added when configured). It
yields n-1 next-token pairs (d[i], d[i+1]), and a segment holding pairs i..j occupies j-i+1 positions with
inputs d[i..j] and targets d[i+1..j+1]: for [BOS a b c EOS], inputs = [BOS a b c], targets = [a b c EOS].
Hence a target never belongs to another document and every position of a segment counts in the loss
(targets_segmentation == inputs_segmentation here; the synthetic stream is the one that zeroes a last target).

Pieces. A document with more than T pairs is cut into pieces of T pairs (the last one shorter). Consecutive
pieces share one token: the last target of piece k is the first input of piece k+1, so each pair of the
document is trained exactly once per epoch and none is lost at a cut. Positions restart at 0 in every piece,
which keeps positions below T for models with learned position tables. Documents with fewer than two tokens
have no pairs and are dropped.

Packing (packing=True). Pieces are visited in the given (shuffled) order and placed first-fit into up to
`OPEN_ROWS` partially filled rows; a piece that fits in none opens a new row. When all open rows are taken and
none has room, the oldest is closed, and if its gap is at least `MIN_FRAGMENT` positions the gap is filled
with the head of the piece (cut like a long document, sharing one token with the rest), which then goes on
being placed. Whole pieces stay intact whenever they fit somewhere, yet rows are ~99% full at every T (plain
first-fit of ~1.3k-token documents into T=2048 rows leaves a third of the positions empty). A row is emitted
when full or closed; open rows are flushed in opening order at the end of the pieces. The layout depends only
on the order and the lengths, so it is deterministic. With packing=False every piece gets its own row. Unused
positions are padding: token 0 (pad), position 0, segmentation 0.

Concat-then-split (packing_type="concat"). Pieces are laid end to end in the given order and the stream is cut
every T positions: every row but the last is full, and a piece crossing a cut is split there (sharing one
token, as above), its tail opening the next row with positions restarting at 0. No document loses a pair.

Loss mask (supervised fine-tuning). Documents may carry a per-token mask: mask[i] = 1 when token i is trained
as a target (an assistant's token), 0 when it is context only (the prompt). `fill_row` zeroes
targets_segmentation where the target is untrained and keeps inputs_segmentation, so attention still sees the
whole document and never another one. `pack_rows(..., whole_pieces=True)` never splits a piece in first_fit
(a conversation cut there would train its tail without its prompt).
"""

import dataclasses
from typing import Sequence

import numpy as np

BATCH_KEYS = ("inputs", "inputs_position", "inputs_segmentation", "targets", "targets_segmentation")
OPEN_ROWS = 8
MIN_FRAGMENT = 16
PACKING_TYPES = ("first_fit", "concat")


@dataclasses.dataclass(frozen=True)
class TokenizedDocs:
    """Token sequences stored flat: document k is tokens[starts[k] : starts[k] + lengths[k]].

    loss_mask, when set, is parallel to tokens: 1 where the token is trained as a target, 0 where it is not
    (see the module docstring); None trains every token.
    """

    tokens: np.ndarray  # int32 [sum of lengths]
    starts: np.ndarray  # int64 [num_docs]
    lengths: np.ndarray  # int64 [num_docs]
    loss_mask: np.ndarray | None = None  # int8 [sum of lengths], or None

    @classmethod
    def from_sequences(
        cls, sequences: Sequence[Sequence[int]], masks: Sequence[Sequence[int]] | None = None
    ) -> "TokenizedDocs":
        """masks: one per sequence, of its length (None: no mask)."""
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        starts = np.zeros_like(lengths)
        if len(lengths):
            starts[1:] = np.cumsum(lengths)[:-1]
        parts = [np.asarray(s, dtype=np.int32) for s in sequences]
        tokens = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        loss_mask = None
        if masks is not None:
            if [len(m) for m in masks] != lengths.tolist():
                raise ValueError("every loss mask must have the length of its token sequence")
            flat = [np.asarray(m, dtype=np.int8) for m in masks]
            loss_mask = np.concatenate(flat) if flat else np.zeros(0, np.int8)
        return cls(tokens=tokens, starts=starts, lengths=lengths, loss_mask=loss_mask)

    def __len__(self) -> int:
        return len(self.lengths)


@dataclasses.dataclass(frozen=True)
class Pieces:
    """Piece p has inputs tokens[starts[p] : starts[p] + lengths[p]] and targets shifted by one token."""

    starts: np.ndarray  # int64 [num_pieces]
    lengths: np.ndarray  # int64 [num_pieces], in 1..T

    def __len__(self) -> int:
        return len(self.lengths)


def make_pieces(docs: TokenizedDocs, max_target_length: int) -> Pieces:
    """Cuts every document into pieces of at most `max_target_length` pairs (see module docstring)."""
    pairs = docs.lengths - 1
    keep = pairs >= 1
    pairs, doc_starts = pairs[keep], docs.starts[keep]
    counts = -(-pairs // max_target_length)  # ceil
    doc_of_piece = np.repeat(np.arange(len(pairs)), counts)
    first_piece = np.cumsum(counts) - counts
    k = np.arange(len(doc_of_piece)) - first_piece[doc_of_piece]
    starts = doc_starts[doc_of_piece] + k * max_target_length
    lengths = np.minimum(max_target_length, pairs[doc_of_piece] - k * max_target_length)
    return Pieces(starts=starts.astype(np.int64), lengths=lengths.astype(np.int64))


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Rows as lists of segments: row r holds segments ptr[r] .. ptr[r+1]-1, placed left to right.

    Segment j has inputs tokens[starts[j] : starts[j] + lengths[j]] and targets shifted by one token.
    """

    ptr: np.ndarray  # int64 [R + 1]
    starts: np.ndarray  # int64 [number of segments]
    lengths: np.ndarray  # int64 [number of segments]

    @property
    def num_rows(self) -> int:
        return len(self.ptr) - 1

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) of the segments of row r."""
        lo, hi = self.ptr[r], self.ptr[r + 1]
        return self.starts[lo:hi], self.lengths[lo:hi]


def pack_rows(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    order: np.ndarray,
    pieces: Pieces,
    max_target_length: int,
    packing: bool,
    packing_type: str = "first_fit",
    whole_pieces: bool = False,
) -> RowLayout:
    """Places pieces[order] into rows of `max_target_length` positions (see module docstring).

    whole_pieces: first_fit closes a full set of open rows without filling the oldest one's gap with a head
    of the piece, so no piece is split (concat splits by definition).
    """
    if packing_type not in PACKING_TYPES:
        raise ValueError(f"packing_type {packing_type!r} is not one of {PACKING_TYPES}")
    order = np.asarray(order, dtype=np.int64)
    starts, lengths = pieces.starts[order], pieces.lengths[order]
    if not packing:
        return RowLayout(ptr=np.arange(len(order) + 1, dtype=np.int64), starts=starts, lengths=lengths)
    if packing_type == "concat":
        return _concat_then_split(starts, lengths, max_target_length)
    rows: list[list[tuple[int, int]]] = []
    open_rows: list[_OpenRow] = []
    for start, length in zip(starts.tolist(), lengths.tolist()):
        while length:
            if length == max_target_length:
                rows.append([(start, length)])
                break
            row = next((r for r in open_rows if r.free >= length), None)
            if row is not None:
                row.add(start, length)
                if not row.free:
                    open_rows.remove(row)
                    rows.append(row.segments)
                break
            if len(open_rows) < OPEN_ROWS:
                open_rows.append(_OpenRow(max_target_length))
                open_rows[-1].add(start, length)
                break
            # No room anywhere: close the oldest row, first filling its gap with the head of this piece.
            oldest = open_rows.pop(0)
            if oldest.free >= MIN_FRAGMENT and not whole_pieces:
                head = oldest.free
                oldest.add(start, head)
                start, length = start + head, length - head
            rows.append(oldest.segments)
    rows.extend(r.segments for r in open_rows)
    return _layout(rows)


def _concat_then_split(starts: np.ndarray, lengths: np.ndarray, max_target_length: int) -> RowLayout:
    rows: list[list[tuple[int, int]]] = [[]]
    free = max_target_length
    for start, length in zip(starts.tolist(), lengths.tolist()):
        while length:
            if not free:
                rows.append([])
                free = max_target_length
            take = min(free, length)
            rows[-1].append((start, take))
            start, length, free = start + take, length - take, free - take
    return _layout([r for r in rows if r])


def _layout(rows: list[list[tuple[int, int]]]) -> RowLayout:
    ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(r) for r in rows])
    flat = np.array([seg for r in rows for seg in r], dtype=np.int64).reshape(-1, 2)
    return RowLayout(ptr=ptr, starts=flat[:, 0].copy(), lengths=flat[:, 1].copy())


class _OpenRow:
    """A partially filled row during packing."""

    def __init__(self, max_target_length: int):
        self.free = max_target_length
        self.segments: list[tuple[int, int]] = []

    def add(self, start: int, length: int) -> None:
        self.free -= length
        self.segments.append((start, length))


def empty_batch(num_rows: int, max_target_length: int) -> dict[str, np.ndarray]:
    """All-padding batch: every array int32 [num_rows, max_target_length] of zeros."""
    return {k: np.zeros((num_rows, max_target_length), dtype=np.int32) for k in BATCH_KEYS}


def fill_row(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    batch: dict[str, np.ndarray],
    r: int,
    starts: np.ndarray,
    lengths: np.ndarray,
    tokens: np.ndarray,
    loss_mask: np.ndarray | None = None,
) -> None:
    """Writes one row's segments into row `r` of a zero-initialised batch (segments numbered from 1).

    loss_mask (parallel to tokens, or None): targets_segmentation is 0 where the target token is untrained.
    """
    offset = 0
    for segment, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist()), start=1):
        end = offset + length
        batch["inputs"][r, offset:end] = tokens[start : start + length]
        batch["targets"][r, offset:end] = tokens[start + 1 : start + length + 1]
        batch["inputs_position"][r, offset:end] = np.arange(length, dtype=np.int32)
        batch["inputs_segmentation"][r, offset:end] = segment
        trained = 1 if loss_mask is None else loss_mask[start + 1 : start + length + 1]
        batch["targets_segmentation"][r, offset:end] = segment * trained
        offset = end
