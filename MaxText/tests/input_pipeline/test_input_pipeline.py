"""Invariants of the data pipeline: packing, coverage, determinism, resume, host slicing, splits, errors."""

import dataclasses
import json

import numpy as np
import pytest

from MaxText.input_pipeline import (
    BATCH_KEYS,
    BUILTIN_TOKENIZER_PATH,
    DataConfig,
    builtin_corpus,
    iterators,
    lanes,
    make_eval_batches,
    make_train_iterator,
    packing,
    pipeline,
)

T = 64
B = 8


def _cfg(**overrides) -> DataConfig:
    base = DataConfig(
        dataset_type="builtin",
        tokenizer_path=BUILTIN_TOKENIZER_PATH,
        max_target_length=T,
        global_batch_size=B,
        vocab_size=4096,
        data_shuffle_seed=3,
    )
    return dataclasses.replace(base, **overrides)


def _counting_docs(lengths, spacing=10_000) -> packing.TokenizedDocs:
    """Document k is [k*spacing + 1, k*spacing + 2, ...]: within a document every target is its input + 1."""
    return packing.TokenizedDocs.from_sequences(
        [np.arange(n) + 1 + k * spacing for k, n in enumerate(lengths)]
    )


def _small_iterator(
    lengths=(3, 17, 40, 9, 64, 5, 23, 2, 30, 11),
    t=16,
    b=4,
    process_index=0,
    process_count=1,
    packed=True,
    seed=0,
):
    docs = _counting_docs(lengths)
    dealt = lanes.deal(len(docs), b, seed, 0, True)
    own = range(*iterators.host_row_range(b, process_index, process_count))
    sources = {
        r: iterators.PackedRowSource(
            packing.TokenizedDocs.from_sequences([_doc(docs, i) for i in dealt[r]]),
            t,
            packed,
            lanes.lane_seed(seed, r),
        )
        for r in own
    }
    return lanes.LaneTrainIterator(sources, b, {})


def _doc(docs, i):
    return docs.tokens[docs.starts[i] : docs.starts[i] + docs.lengths[i]]


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _check_rows(batch, t):
    """Layout invariants that hold for every batch of packed documents."""
    assert set(batch) == set(BATCH_KEYS)
    for k in BATCH_KEYS:
        assert batch[k].dtype == np.int32 and batch[k].shape[1] == t, k
    seg, pos = batch["inputs_segmentation"], batch["inputs_position"]
    np.testing.assert_array_equal(batch["targets_segmentation"], seg)
    for r in range(seg.shape[0]):
        used = int((seg[r] > 0).sum())
        assert (seg[r, used:] == 0).all(), "padding only at the end of a row"
        for key in BATCH_KEYS:
            assert (batch[key][r, used:] == 0).all(), key
        ids = seg[r, :used]
        assert ids[0] == 1 and set(np.diff(ids)) <= {0, 1}, "segments numbered 1, 2, 3... left to right"
        for s in np.unique(ids):
            np.testing.assert_array_equal(pos[r, :used][ids == s], np.arange((ids == s).sum()))


def _epoch_pairs(source, epoch):
    """Sorted (input, target) pairs, as int64 codes, over every row of one epoch."""
    layout = source.layout(epoch)
    batch = source.materialize([(layout, r) for r in range(layout.num_rows)])
    mask = batch["targets_segmentation"] != 0
    return np.sort(batch["inputs"][mask].astype(np.int64) * 1_000_003 + batch["targets"][mask])


def _doc_pairs(docs):
    pairs = [
        docs.tokens[s : s + n - 1].astype(np.int64) * 1_000_003 + docs.tokens[s + 1 : s + n]
        for s, n in zip(docs.starts, docs.lengths)
    ]
    return np.sort(np.concatenate(pairs))


# --- packing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [True, False])
def test_targets_shift_within_documents_and_positions_restart(packed):
    it = _small_iterator(packed=packed)
    for batch in _take(it, 12):
        _check_rows(batch, 16)
        seg = batch["targets_segmentation"] != 0
        # Counting documents: a target from another document would not be input + 1.
        np.testing.assert_array_equal(batch["targets"][seg], batch["inputs"][seg] + 1)
        if not packed:
            assert batch["inputs_segmentation"].max() <= 1


@pytest.mark.parametrize("packed", [True, False])
def test_epoch_trains_every_next_token_pair_exactly_once(packed):
    docs = _counting_docs([3, 17, 40, 9, 64, 5, 23, 2, 30, 11, 1, 16, 15])
    source = iterators.PackedRowSource(docs, 16, packed, seed=7)
    for epoch in (0, 1):
        np.testing.assert_array_equal(_epoch_pairs(source, epoch), _doc_pairs(docs))


def test_builtin_epoch_covers_corpus_pairs_and_rows_are_nearly_full():
    cfg = _cfg(max_target_length=256)
    docs = pipeline.builtin_token_docs(cfg, "train")
    source = iterators.PackedRowSource(docs, 256, True, seed=0)
    np.testing.assert_array_equal(_epoch_pairs(source, 0), _doc_pairs(docs))
    layout = source.layout(0)
    assert layout.lengths.sum() / (layout.num_rows * 256) > 0.99


def test_pieces_are_at_most_t_and_share_one_token():
    docs = _counting_docs([1, 2, 16, 17, 33, 50])
    pieces = packing.make_pieces(docs, 16)
    assert pieces.lengths.max() == 16 and pieces.lengths.min() >= 1
    assert pieces.lengths.sum() == (docs.lengths - 1).sum()  # one-token documents have no pairs
    np.testing.assert_array_equal(pieces.lengths[-4:], [16, 16, 16, 1])
    np.testing.assert_array_equal(np.diff(pieces.starts[-4:]), [16, 16, 16])


def test_builtin_batches_follow_conventions():
    it = make_train_iterator(_cfg())
    for batch in _take(it, 5):
        _check_rows(batch, T)
        assert batch["inputs"].shape == (B, T)
        assert batch["inputs"].max() < 4096
    # A document starts with BOS at position 0 and its last target is EOS.
    batch = next(make_train_iterator(_cfg(max_target_length=2048)))
    starts = batch["inputs"][batch["inputs_position"] == 0]
    assert (starts == 1).any()
    assert (batch["targets"] == 2).any() and not (batch["inputs"] == 2).any()


# --- determinism, resume, hosts -----------------------------------------------------------------------------


def test_same_config_gives_same_batches_and_seed_changes_them():
    _assert_batches_equal(_take(make_train_iterator(_cfg()), 3), _take(make_train_iterator(_cfg()), 3))
    other = next(make_train_iterator(_cfg(data_shuffle_seed=4)))
    assert not np.array_equal(other["inputs"], next(make_train_iterator(_cfg()))["inputs"])


def test_epochs_are_reshuffled():
    source = iterators.PackedRowSource(_counting_docs([9] * 40), 8, True, seed=1)
    assert not np.array_equal(source.layout(0).starts, source.layout(1).starts)


def test_resume_mid_stream_and_across_epoch_boundaries():
    it = _small_iterator()
    _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 20)
    assert min(it.lane_epochs()) >= 2, "the test should cross several epochs of every lane"
    resumed = _small_iterator()
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 20), expected)


def test_builtin_resume_across_epoch_end():
    it = make_train_iterator(_cfg())
    state = it.get_state()
    near_end = [
        [0, it.lane_sources[r].layout(0).num_rows - 1 - r % 3, fp]
        for r, (_, _, fp) in enumerate(state["lanes"])
    ]
    it.set_state({**state, "lanes": near_end})
    state = json.loads(json.dumps(it.get_state()))
    assert len(json.dumps(state)) < 700
    expected = _take(it, 4)
    assert it.lane_epochs() == [1] * B
    fresh = make_train_iterator(_cfg())
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 4), expected)


def test_lanes_deal_every_train_document_once():
    cfg = _cfg()
    parts = pipeline.split_parts(cfg, "train")
    dealt = lanes.deal(len(parts[0].records), B, cfg.data_shuffle_seed, 0, True)
    np.testing.assert_array_equal(np.sort(np.concatenate(dealt)), np.arange(len(parts[0].records)))
    assert max(map(len, dealt)) - min(map(len, dealt)) <= 1
    # Fewer items than lanes: the order repeats so that every lane has one.
    few = lanes.deal(3, 8, 0, 0, False)
    assert [x.tolist() for x in few] == [[0], [1], [2], [0], [1], [2], [0], [1]]


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_slices_concatenate_to_the_global_batch(process_count):
    expected = _take(_small_iterator(b=4), 15)
    hosts = [
        _take(_small_iterator(b=4, process_index=i, process_count=process_count), 15)
        for i in range(process_count)
    ]
    for step, batch in enumerate(expected):
        for k in BATCH_KEYS:
            np.testing.assert_array_equal(np.concatenate([h[step][k] for h in hosts]), batch[k])


@pytest.mark.parametrize("saved_by, resumed_on", [(1, 2), (2, 1), (2, 4)])
def test_resume_with_another_host_count_continues_every_lane(saved_by, resumed_on):
    def hosts(count):
        return [make_train_iterator(_cfg(), process_index=i, process_count=count) for i in range(count)]

    def step(its):
        return {k: np.concatenate([b[k] for b in [next(it) for it in its]]) for k in BATCH_KEYS}

    before = hosts(saved_by)
    for _ in range(3):
        step(before)
    state = lanes.merge_states([json.loads(json.dumps(it.get_state())) for it in before])
    expected = [step(before) for _ in range(3)]
    after = hosts(resumed_on)
    for it in after:
        it.set_state(state)
    _assert_batches_equal([step(after) for _ in range(3)], expected)
    # A host's own state lacks the other hosts' lanes: refused until merged.
    if saved_by > 1:
        with pytest.raises(ValueError, match="no position for lane"):
            make_train_iterator(_cfg()).set_state(before[0].get_state())


# --- splits and eval ----------------------------------------------------------------------------------------


def test_train_and_eval_documents_are_disjoint():
    docs = builtin_corpus.load_documents()
    train, evals = builtin_corpus.split_train_eval(docs, 0.02)
    assert set(train).isdisjoint(evals) and len(train) + len(evals) == len(docs)
    assert 0.01 * len(docs) < len(evals) < 0.04 * len(docs)
    assert {docs[i] for i in train}.isdisjoint(docs[i] for i in evals)
    more_train, more_eval = builtin_corpus.split_train_eval(docs, 0.05)
    assert set(evals) <= set(more_eval) and set(more_train) <= set(train)
    train_docs = pipeline.builtin_token_docs(_cfg(), "train")
    eval_docs = pipeline.builtin_token_docs(_cfg(), "eval")
    assert (len(train_docs), len(eval_docs)) == (len(train), len(evals))

    def sequences(d):
        return {d.tokens[s : s + n].tobytes() for s, n in zip(d.starts, d.lengths)}

    assert sequences(train_docs).isdisjoint(sequences(eval_docs))


def test_eval_batches_are_fixed_and_wrap_around():
    cfg = _cfg(max_target_length=256, global_batch_size=16)
    first = make_eval_batches(cfg, 3)
    _assert_batches_equal(first, make_eval_batches(cfg, 3))
    _assert_batches_equal(first, make_eval_batches(dataclasses.replace(cfg, data_shuffle_seed=99), 3))
    for batch in first:
        _check_rows(batch, 256)
    eval_lanes = pipeline.lane_sources(cfg, "eval", pipeline.split_parts(cfg, "eval"), range(16))
    periods = [eval_lanes[r].unshuffled_layout().num_rows for r in range(16)]
    many = make_eval_batches(cfg, max(periods) + 1)
    for r, period in enumerate(periods):  # each row cycles through its lane's rows
        np.testing.assert_array_equal(many[period]["inputs"][r], many[0]["inputs"][r])
        assert period == 1 or not np.array_equal(many[1]["inputs"][r], many[0]["inputs"][r])
    hosts = [make_eval_batches(cfg, 3, i, 2) for i in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([hosts[0][2]["inputs"], hosts[1][2]["inputs"]]), first[2]["inputs"]
    )


def test_split_documents_keeps_the_text_and_sizes():
    work = "\n\n".join(f"para {i} " + "x" * (i * 37 % 900) for i in range(60))
    docs = builtin_corpus.split_documents(work, target_chars=1000)
    assert "\n\n".join(docs) == work
    assert all(len(d) >= 500 for d in docs)
    all_docs = builtin_corpus.load_documents()
    assert len(all_docs) == 1202 and all(2000 < len(d) < 8000 for d in all_docs)


# --- synthetic ----------------------------------------------------------------------------------------------


def _synthetic_cfg(**overrides) -> DataConfig:
    return _cfg(dataset_type="synthetic", tokenizer_path="", vocab_size=50, **overrides)


def test_synthetic_rows_are_one_long_document():
    batch = next(make_train_iterator(_synthetic_cfg()))
    assert all(batch[k].shape == (B, T) and batch[k].dtype == np.int32 for k in BATCH_KEYS)
    assert 0 <= batch["inputs"].min() and batch["inputs"].max() < 50
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    np.testing.assert_array_equal(batch["inputs_position"], np.broadcast_to(np.arange(T), (B, T)))
    assert (batch["inputs_segmentation"] == 1).all()
    assert (batch["targets_segmentation"][:, :-1] == 1).all() and (
        batch["targets_segmentation"][:, -1] == 0
    ).all()


def test_synthetic_determinism_resume_hosts_and_eval():
    it = make_train_iterator(_synthetic_cfg())
    _take(it, 3)
    state = it.get_state()
    assert state == {"step": 3}
    expected = _take(it, 3)
    resumed = make_train_iterator(_synthetic_cfg())
    resumed.set_state(json.loads(json.dumps(state)))
    _assert_batches_equal(_take(resumed, 3), expected)
    host1 = make_train_iterator(_synthetic_cfg(), process_index=1, process_count=2)
    host1.set_state(state)
    np.testing.assert_array_equal(next(host1)["inputs"], expected[0]["inputs"][B // 2 :])
    evals = make_eval_batches(_synthetic_cfg(), 2)
    _assert_batches_equal(evals, make_eval_batches(_synthetic_cfg(), 2))
    assert not np.array_equal(evals[0]["inputs"], next(make_train_iterator(_synthetic_cfg()))["inputs"])


# --- errors -------------------------------------------------------------------------------------------------


def test_clear_errors():
    with pytest.raises(
        ValueError, match="global_batch_size 8 must be a positive multiple of process_count 3"
    ):
        make_train_iterator(_cfg(), process_index=0, process_count=3)
    with pytest.raises(ValueError, match="vocab_size 100 .* 4096"):
        make_train_iterator(_cfg(vocab_size=100))
    with pytest.raises(ValueError, match="dataset_type 'webdataset'"):
        make_train_iterator(_cfg(dataset_type="webdataset"))
    with pytest.raises(ValueError, match="tokenizer_path is empty"):
        make_train_iterator(_cfg(tokenizer_path=""))
    with pytest.raises(FileNotFoundError, match="nope.model"):
        make_train_iterator(_cfg(tokenizer_path="/nonexistent/nope.model"))
    with pytest.raises(ValueError, match="eval_fraction"):
        make_train_iterator(_cfg(eval_fraction=1.0))
    with pytest.raises(ValueError, match="holds out no documents"):
        make_eval_batches(_cfg(eval_fraction=0.0), 1)
    with pytest.raises(ValueError, match="process_index 2"):
        make_train_iterator(_cfg(), process_index=2, process_count=2)


def test_state_from_another_stream_is_refused():
    state = make_train_iterator(_cfg()).get_state()
    with pytest.raises(ValueError, match="data_shuffle_seed: saved 3 vs now 4"):
        make_train_iterator(_cfg(data_shuffle_seed=4)).set_state(state)
    with pytest.raises(ValueError, match="max_target_length"):
        make_train_iterator(_cfg(max_target_length=32)).set_state(state)
    with pytest.raises(ValueError, match="synthetic data iterator state"):
        make_train_iterator(_synthetic_cfg()).set_state(state)
