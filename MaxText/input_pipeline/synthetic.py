"""Synthetic data: uniform random tokens, a pure function of (seed, stream, step, global row).

Every row is one document filling all T positions: inputs_segmentation 1, positions 0..T-1, targets the inputs
shifted left by one, and the last position (whose next token is not in the row) has target pad and
targets_segmentation 0. Row g of step s is drawn from its own generator seeded with (seed, stream, s, g), so
a host draws only its own rows and the global stream does not depend on the host count.
"""

import numpy as np

from MaxText.input_pipeline import iterators, packing

TRAIN_STREAM = 0
EVAL_STREAM = 1


def synthetic_batch(
    seed: int, stream: int, step: int, rows: range, max_target_length: int, vocab_size: int
) -> dict[str, np.ndarray]:
    """Batch of the global rows `rows` of step `step`; int32 arrays [len(rows), max_target_length]."""
    batch = packing.empty_batch(len(rows), max_target_length)
    for k, g in enumerate(rows):
        rng = np.random.default_rng([seed, stream, step, g])
        batch["inputs"][k] = rng.integers(0, vocab_size, size=max_target_length, dtype=np.int32)
    batch["targets"][:, :-1] = batch["inputs"][:, 1:]
    batch["inputs_position"][:] = np.arange(max_target_length, dtype=np.int32)
    batch["inputs_segmentation"][:] = 1
    batch["targets_segmentation"][:, :-1] = 1
    return batch


class SyntheticTrainIterator(iterators.TrainIterator):
    """Train iterator over synthetic rows; state {"step": n}, the number of batches already produced."""

    def __init__(
        self,
        seed: int,
        max_target_length: int,
        vocab_size: int,
        global_batch_size: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        lo, hi = iterators.host_row_range(global_batch_size, process_index, process_count)
        self._rows = range(lo, hi)
        self._seed, self._length, self._vocab = seed, max_target_length, vocab_size
        self._step = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = synthetic_batch(self._seed, TRAIN_STREAM, self._step, self._rows, self._length, self._vocab)
        self._step += 1
        return batch

    def get_state(self) -> dict:
        return {"step": self._step}

    def set_state(self, state: dict) -> None:
        step = state.get("step")
        if set(state) != {"step"} or not isinstance(step, int) or step < 0:
            raise ValueError(f"synthetic data iterator state must be {{'step': n >= 0}}, got {state!r}")
        self._step = step
