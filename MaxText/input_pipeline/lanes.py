"""Lanes: row r of every global batch is the next row of its own packed stream ("lane" r).

Why lanes. For every host to read only the records that end up in its rows, while the batches stay the same
whatever the host count, a row must be computable from a fixed subset of the records. So the records are
dealt out to G = global_batch_size lanes once, and lane r alone produces row r of every batch.

Dealing. A split is one or more sources (the parts of a mixture). Train: source k's records are put in a
random order drawn from (data_shuffle_seed, k), and position i goes to lane i mod G. Eval: the records of all
sources, in the split's fixed order, position i to lane i mod G. When a source has fewer than G records its
order repeats until every lane has one, so every lane holds at least one record of every source.

A lane is a `iterators.PackedRowSource` over its records, seeded by (data_shuffle_seed, lane): train visits
the lane's pieces in a new shuffled order every lane epoch (mixture weights are applied per lane, exactly per
mixed lane epoch) and packs them as configured; eval packs them in order and cycles. Lanes run through their
epochs independently (a lane of short documents starts its next epoch sooner), so a document is seen once per
epoch of its lane; with many documents per lane the lanes' epochs hold nearly the same number of tokens.

Hosts. Host h of P owns lanes [h*G/P, (h+1)*G/P), i.e. its rows of the global batch
(`iterators.host_row_range`), and reads and tokenizes the records of those lanes only, once per run.

State. Every lane's position, {"lanes": [[epoch, row, fingerprint], ...] (G entries), + identity}: JSON, about
20 bytes per lane. A host knows only its own lanes' positions (the others are null), so a multi-host job
gathers the hosts' states and merges them (`merge_states`) before saving; a host restoring a complete state
takes its own lanes' positions, whatever host count saved it. The fingerprint (of the lane's tokens) refuses a
state taken over other data.
"""

import numpy as np

from MaxText.input_pipeline import iterators, packing

_LANE_SEED_TAG = 0x4C414E45  # "LANE": keeps lane seeds apart from other seeds derived from data_shuffle_seed


def deal(num_items: int, num_lanes: int, seed: int, ordinal: int, shuffle: bool) -> list[np.ndarray]:
    """Item indices of every lane: position i of the (shuffled) order goes to lane i mod num_lanes.

    With fewer items than lanes the order repeats until every lane has one item.
    """
    if num_items < 1:
        raise ValueError("cannot deal an empty source to lanes")
    order = np.arange(num_items, dtype=np.int64)
    if shuffle:
        order = np.random.default_rng(np.random.SeedSequence([seed, _LANE_SEED_TAG, ordinal])).permutation(
            order
        )
    order = order[np.arange(max(num_items, num_lanes)) % num_items]
    return [order[r::num_lanes] for r in range(num_lanes)]


def lane_seed(seed: int, lane: int) -> int:
    """The shuffle seed of one lane's epochs."""
    return int(np.random.SeedSequence([seed, _LANE_SEED_TAG, 1 << 20, lane]).generate_state(1)[0])


def lane_fingerprint(source: iterators.PackedRowSource) -> str:
    return iterators.docs_fingerprint(source.docs)[:8]


class LaneTrainIterator(iterators.TrainIterator):
    """Rows of this host's lanes, one per lane per batch; see the module docstring for the state."""

    def __init__(
        self,
        lanes: dict[int, iterators.PackedRowSource],
        num_lanes: int,
        identity: dict,
        stats: dict | None = None,
    ):
        """stats: counts about the records read (use_sft: `sft.summarize`), reported by `stats`."""
        self.stats = stats or {}
        self._lanes = dict(sorted(lanes.items()))
        self._num_lanes = num_lanes
        self._identity = {"global_batch_size": num_lanes, **identity}
        self._fingerprints = {r: lane_fingerprint(s) for r, s in self._lanes.items()}
        self._position = {r: (0, 0) for r in self._lanes}
        first = next(iter(self._lanes.values()))
        self._max_target_length = first.max_target_length

    def __next__(self) -> dict[str, np.ndarray]:
        batch = packing.empty_batch(len(self._lanes), self._max_target_length)
        for k, (r, source) in enumerate(self._lanes.items()):
            epoch, row = self._position[r]
            layout = source.layout(epoch)
            source.fill_row(batch, k, layout, row)
            self._position[r] = (epoch + 1, 0) if row + 1 == layout.num_rows else (epoch, row + 1)
        return batch

    def get_state(self) -> dict:
        lanes: list = [None] * self._num_lanes
        for r, (epoch, row) in self._position.items():
            lanes[r] = [epoch, row, self._fingerprints[r]]
        return {"lanes": lanes, **self._identity}

    def set_state(self, state: dict) -> None:
        iterators.check_identity(self._identity, state)
        lanes = state.get("lanes")
        if not isinstance(lanes, list) or len(lanes) != self._num_lanes:
            raise ValueError(f"data iterator state has no position for each of the {self._num_lanes} lanes")
        position = {}
        for r, source in self._lanes.items():
            if lanes[r] is None:
                raise ValueError(
                    f"data iterator state has no position for lane {r} (a host's state, not merged)"
                )
            epoch, row, fingerprint = lanes[r]
            if fingerprint != self._fingerprints[r]:
                raise ValueError(
                    f"data iterator state is from other data: lane {r} fingerprint saved {fingerprint!r} vs now "
                    f"{self._fingerprints[r]!r}"
                )
            if epoch < 0 or not 0 <= row < source.layout(epoch).num_rows:
                raise ValueError(f"data iterator state out of range: lane {r} epoch {epoch}, row {row}")
            position[r] = (int(epoch), int(row))
        self._position = position

    @property
    def lane_sources(self) -> dict[int, iterators.PackedRowSource]:
        """This host's lanes: lane (= global row) -> its source."""
        return self._lanes

    def lane_epochs(self) -> list[int]:
        """The current epoch of each of this host's lanes."""
        return [epoch for epoch, _ in self._position.values()]


def merge_states(states: list[dict]) -> dict:
    """One state from every host's `get_state()`: lane positions combined; other states must agree."""
    first = states[0]
    if "lanes" not in first:
        if any(s != first for s in states[1:]):
            raise ValueError("hosts disagree on the data iterator state")
        return first
    lanes = list(first["lanes"])
    for state in states[1:]:
        iterators.check_identity({k: v for k, v in first.items() if k != "lanes"}, state)
        for r, lane in enumerate(state["lanes"]):
            if lane is not None:
                if lanes[r] is not None and lanes[r] != lane:
                    raise ValueError(f"two hosts hold different positions for lane {r}")
                lanes[r] = lane
    missing = [r for r, lane in enumerate(lanes) if lane is None]
    if missing:
        raise ValueError(f"no host holds the position of lanes {missing[:8]}")
    return {**first, "lanes": lanes}


def eval_batches(
    lanes: dict[int, iterators.PackedRowSource], num_batches: int
) -> list[dict[str, np.ndarray]]:
    """`num_batches` batches: row r of batch b is row b of lane r's unshuffled rows, cycling when they run out."""
    layouts = {r: source.unshuffled_layout() for r, source in sorted(lanes.items())}
    sources_ = dict(sorted(lanes.items()))
    max_target_length = next(iter(sources_.values())).max_target_length
    batches = []
    for b in range(num_batches):
        batch = packing.empty_batch(len(sources_), max_target_length)
        for k, (r, source) in enumerate(sources_.items()):
            layout = layouts[r]
            source.fill_row(batch, k, layout, b % layout.num_rows)
        batches.append(batch)
    return batches
