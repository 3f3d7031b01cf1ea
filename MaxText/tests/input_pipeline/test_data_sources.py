"""User datasets (grain ArrayRecord/Parquet, Hugging Face, TFDS): reading, mixtures, packing, resume, errors."""

import json
import sys

import numpy as np
import pytest

from MaxText.config import ConfigError
from MaxText.input_pipeline import (
    BUILTIN_TOKENIZER_PATH,
    builtin_corpus,
    load_tokenizer,
    make_eval_batches,
    make_train_iterator,
    merge_states,
    packing,
    pipeline,
    writers,
)
from MaxText.input_pipeline.sources import DataError
from MaxText.tests.helpers import NUM_DOCS, data_config, texts, token_ids, write_grain, write_hf, write_tfds


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        for k in packing.BATCH_KEYS:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module", name="files")
def files_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tfds_dir = str(root / "tfds")
    return {
        "grain": write_grain(str(root / "grain")),
        "hf": write_hf(str(root / "hf")),
        "tfds": (write_tfds(tfds_dir), tfds_dir),
        "root": root,
    }


def _configs(files) -> dict:
    """name -> DataConfig, one per format."""
    g, h = files["grain"], files["hf"]
    name, data_dir = files["tfds"]
    out = {f"grain_{k}": data_config("grain", data_files=v) for k, v in g.items() if "ids" not in k}
    out.update({f"hf_{k}": data_config("hf", hf_path=p, data_files=f) for k, (p, f) in h.items()})
    out["tfds"] = data_config("tfds", dataset_name=name, dataset_path=data_dir, eval_split="validation")
    return out


FORMATS = [
    "grain_array_record", "grain_parquet", "hf_json", "hf_parquet", "hf_text", "hf_arrow", "hf_save_to_disk",
    "tfds",
]  # fmt: skip


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_resumes_exactly_and_is_deterministic(files, name):
    cfg = _configs(files)[name]
    it = make_train_iterator(cfg)
    _take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 6)  # crosses an epoch end: 40 short documents fill few rows of 32
    resumed = make_train_iterator(cfg)
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 6), expected)
    _assert_batches_equal(_take(make_train_iterator(cfg), 8), _take(make_train_iterator(cfg), 8))
    # Two hosts resumed from a one-host state: their halves are the rows the single host would have seen;
    # then one host resumed from the two hosts' merged state continues as well (1 -> 2 -> 1 hosts).
    halves = [make_train_iterator(cfg, i, 2) for i in range(2)]
    for h in halves:
        h.set_state(state)
    for want in expected[:3]:
        got = [next(h) for h in halves]
        for k in packing.BATCH_KEYS:
            np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), want[k], err_msg=k)
    one = make_train_iterator(cfg)
    one.set_state(merge_states([json.loads(json.dumps(h.get_state())) for h in halves]))
    _assert_batches_equal(_take(one, 3), expected[3:])
    assert make_eval_batches(cfg, 2)[0]["inputs_segmentation"].any()


def test_all_formats_hold_the_same_documents(files):
    """The same texts in every container give the same tokens (hf text splits on lines: same docs here)."""
    configs = _configs(files)
    grain = pipeline.user_token_docs(configs["grain_array_record"], "train")[0]
    for name in FORMATS[1:-1]:
        docs = pipeline.user_token_docs(configs[name], "train")[0]
        np.testing.assert_array_equal(docs.tokens, grain.tokens, err_msg=name)


def test_pretokenized_columns_skip_tokenization(files):
    text = pipeline.user_token_docs(data_config("grain", data_files=files["grain"]["array_record"]), "train")
    for key in ("array_record_ids", "parquet_ids"):
        cfg = data_config("grain", data_files=files["grain"][key], column="ids", tokenize=False)
        np.testing.assert_array_equal(pipeline.user_token_docs(cfg, "train")[0].tokens, text[0].tokens)


def test_text_versus_ids_mismatch_names_the_column(files):
    g = files["grain"]
    with pytest.raises(DataError, match="train_data_columns='ids' holds token ids, not text; set tokenize"):
        make_train_iterator(data_config("grain", data_files=g["parquet_ids"], column="ids"))
    with pytest.raises(DataError, match="train_data_columns='text' holds text, not token ids; set tokenize"):
        make_train_iterator(data_config("grain", data_files=g["array_record"], tokenize=False))
    with pytest.raises(DataError, match=r"train_data_columns='body': no such column .*\['text'\]"):
        make_train_iterator(data_config("grain", data_files=g["parquet"], column="body"))
    with pytest.raises(DataError, match=r"train_data_columns='body': no such column .*\['text'\]"):
        make_train_iterator(data_config("grain", data_files=g["array_record"], column="body"))


def test_mixture_weights_are_honoured(tmp_path):
    """Sources with disjoint token ranges; the share of documents from each matches its weight."""
    rng = np.random.default_rng(0)
    for name, lo in (("a", 10), ("b", 500)):
        docs = [
            rng.integers(lo, lo + 100, size=int(rng.integers(4, 12))).tolist()
            for _ in range(30 if name == "a" else 90)
        ]
        writers.write_array_record(str(tmp_path / f"{name}.array_record"), [{"ids": d} for d in docs])
    spec = f"{tmp_path}/a.array_record:0.7;{tmp_path}/b.array_record:0.3"
    cfg = data_config("grain", data_files=spec, column="ids", tokenize=False, add_bos=False, add_eos=False)
    from_a = total = 0
    for batch in _take(make_train_iterator(cfg), 25):
        seg, first = batch["inputs_segmentation"], batch["inputs"]
        starts = (seg != 0) & (batch["inputs_position"] == 0)
        from_a += int((starts & (first < 500)).sum())
        total += int(starts.sum())
    share = from_a / total
    sigma = (0.7 * 0.3 / total) ** 0.5
    assert abs(share - 0.7) < 4 * sigma, (share, total)
    # Exact per mixed epoch: 120 pieces of which round(0.7 * 120) from a (its 27 train docs repeat).
    source = pipeline.iterators.PackedRowSource(
        *pipeline.user_token_docs(cfg, "train")[:1],
        32,
        True,
        3,
        "first_fit",
        pipeline.user_token_docs(cfg, "train")[1],
    )
    _, n_a, count_a = source.mixture[0]
    assert (count_a, source.mixture[1][2]) == (
        round(0.7 * len(source.pieces)),
        round(0.3 * len(source.pieces)),
    )
    assert n_a < count_a  # the small heavy source repeats within a mixed epoch
    pieces = source.epoch_pieces(0)
    assert int((pieces < n_a).sum()) == count_a


@pytest.mark.parametrize("packing_type", ["first_fit", "concat"])
def test_packing_types_keep_documents_apart_and_mask_padding(files, packing_type):
    cfg = data_config("grain", data_files=files["grain"]["array_record"], packing_type=packing_type)
    docs = pipeline.user_token_docs(cfg, "train")[0]
    doc_text = {tuple(docs.tokens[s : s + n]) for s, n in zip(docs.starts, docs.lengths)}
    batches = _take(make_train_iterator(cfg), 6)
    for batch in batches:
        for r in range(batch["inputs"].shape[0]):
            seg = batch["inputs_segmentation"][r]
            np.testing.assert_array_equal(seg, batch["targets_segmentation"][r])
            for s in np.unique(seg[seg > 0]):
                where = seg == s
                np.testing.assert_array_equal(batch["inputs_position"][r][where], np.arange(where.sum()))
                pairs = np.concatenate([batch["inputs"][r][where][:1], batch["targets"][r][where]])
                assert any(_contains(d, tuple(pairs.tolist())) for d in doc_text)  # a slice of one document
            assert (batch["inputs"][r][seg == 0] == 0).all() and (batch["targets"][r][seg == 0] == 0).all()
    if packing_type == "concat":  # in every lane, every row but the last of a lane epoch is full
        for source in make_train_iterator(cfg).lane_sources.values():
            for epoch in (0, 1):
                layout = source.layout(epoch)
                filled = np.add.reduceat(layout.lengths, layout.ptr[:-1])
                assert (filled[:-1] == 32).all() and 0 < filled[-1] <= 32


def _contains(doc: tuple, part: tuple) -> bool:
    return any(doc[i : i + len(part)] == part for i in range(len(doc) - len(part) + 1))


def test_packing_false_pads_with_segment_zero(files):
    cfg = data_config("grain", data_files=files["grain"]["parquet"], packing=False)
    for batch in _take(make_train_iterator(cfg), 4):
        seg = batch["inputs_segmentation"]
        assert set(np.unique(seg)) <= {0, 1} and (seg[:, 0] == 1).all()
        assert ((seg == 0) == (batch["targets_segmentation"] == 0)).all()
        assert (batch["inputs"][seg == 0] == 0).all()


def test_eval_split_is_held_out_or_given(files):
    cfg = data_config("grain", data_files=files["grain"]["array_record"])
    train, evals = (pipeline.user_token_docs(cfg, s)[0] for s in ("train", "eval"))
    assert len(train) + len(evals) == NUM_DOCS and len(evals) >= 1
    given = data_config(
        "grain", data_files=files["grain"]["array_record"], eval_files=files["grain"]["parquet"]
    )
    assert len(pipeline.user_token_docs(given, "eval")[0]) == NUM_DOCS
    assert len(pipeline.user_token_docs(given, "train")[0]) == NUM_DOCS


def test_grain_workers_give_the_same_documents(files):
    cfg = data_config("grain", data_files=files["grain"]["array_record"])
    in_process = pipeline.user_token_docs(cfg, "train")[0]
    workers = pipeline.user_token_docs(
        data_config("grain", data_files=files["grain"]["array_record"], worker_count=1), "train"
    )[0]
    np.testing.assert_array_equal(workers.tokens, in_process.tokens)


def test_bad_input_gets_one_clear_message(files, tmp_path):
    root = files["root"]
    cases = [
        (
            data_config("grain", data_files=f"{root}/nothing-*.parquet"),
            "nothing-\\*.parquet' matches no file",
        ),
        (
            data_config("grain", data_files=f"{root}/missing.array_record"),
            "missing.array_record' matches no file",
        ),
        (
            data_config("hf", hf_path="json", data_files=f"{root}/missing.jsonl"),
            "missing.jsonl' matches no file",
        ),
        (
            data_config("tfds", dataset_name="nope:1.0.0", dataset_path=str(root)),
            "dataset_name='nope:1.0.0'",
        ),
    ]
    writers.write_array_record(str(tmp_path / "empty.array_record"), [])
    cases.append((data_config("grain", data_files=f"{tmp_path}/empty.array_record"), "has no records"))
    (tmp_path / "corrupt.array_record").write_bytes(b"\x00garbage" * 100)
    cases.append(
        (data_config("grain", data_files=f"{tmp_path}/corrupt.array_record"), "corrupt.array_record")
    )
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really")
    cases.append(
        (
            data_config("grain", data_files=f"{tmp_path}/corrupt.parquet"),
            "cannot read Parquet file .*corrupt.parquet",
        )
    )
    for cfg, message in cases:
        with pytest.raises(DataError, match=message):
            make_train_iterator(cfg)
    (tmp_path / "blank.txt").write_text("\n  \n\n")  # blank lines are no documents
    with pytest.raises(ValueError, match="no document with at least two tokens"):
        make_train_iterator(data_config("hf", hf_path="text", data_files=f"{tmp_path}/blank.txt"))
    writers.write_parquet(str(tmp_path / "blank.parquet"), {"text": [" ", ""]})
    mixture = f"{files['grain']['parquet']}:0.5;{tmp_path}/blank.parquet:0.5"
    with pytest.raises(ValueError, match="mixture source 1 has no document with at least two tokens"):
        make_train_iterator(data_config("grain", data_files=mixture))


def test_tfrecord_tfds_without_tensorflow_says_so(tmp_path, monkeypatch):
    name = write_tfds(str(tmp_path), "array_record")
    info = tmp_path / "maxtext_tiny_text" / "1.0.0" / "dataset_info.json"
    meta = json.loads(info.read_text())
    meta["fileFormat"] = "tfrecord"  # what a TensorFlow-written dataset records
    info.write_text(json.dumps(meta))
    cfg = data_config("tfds", dataset_name=name, dataset_path=str(tmp_path))
    # A None entry makes `import tensorflow` fail, so this runs the same whether or not TensorFlow is installed.
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(
        ConfigError, match="stored as tfrecord needs the 'tensorflow' package, not installed; pip"
    ):
        make_train_iterator(cfg)


@pytest.mark.parametrize("packed", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_hf_streaming_resumes_exactly_across_host_counts(files, packed):
    hf_path, data_files = files["hf"]["json"]
    cfg = data_config(
        "hf", hf_path=hf_path, data_files=data_files, hf_streaming=True, packing_type="concat", packing=packed
    )
    it = make_train_iterator(cfg)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 8)  # crosses an epoch end
    assert it.get_state()["epoch"] >= 1
    resumed = make_train_iterator(cfg)
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 8), expected)
    halves = [make_train_iterator(cfg, i, 2) for i in range(2)]
    for h in halves:
        h.set_state(state)
    for want in expected[:3]:
        got = [next(h) for h in halves]
        for k in packing.BATCH_KEYS:
            np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), want[k], err_msg=k)
    # The streamed train documents are the in-memory ones less those whose token ids hash below eval_fraction
    # (streaming's held-out rule: it reads every record anyway).
    every = pipeline.user_token_docs(
        data_config("hf", hf_path=hf_path, data_files=data_files, eval_fraction=0.0), "train"
    )[0]
    every = [every.tokens[s : s + n] for s, n in zip(every.starts, every.lengths)]
    held = [d for d in every if builtin_corpus.document_hash_fraction(d.tobytes()) < cfg.eval_fraction]
    docs = {tuple(d) for d in every} - {tuple(d) for d in held}
    assert held and docs
    for batch in expected:
        seg = batch["inputs_segmentation"]
        assert (batch["inputs"][seg == 0] == 0).all()
        if packed:
            assert (seg[:, -1] != 0).all()  # concat rows are full
        for r in range(seg.shape[0]):
            for s in np.unique(seg[r][seg[r] > 0]):
                where = seg[r] == s
                part = tuple(
                    np.concatenate([batch["inputs"][r][where][:1], batch["targets"][r][where]]).tolist()
                )
                assert any(_contains(d, part) for d in docs)
    evals = make_eval_batches(cfg, 2)
    assert evals[0]["inputs_segmentation"].any()
    _assert_batches_equal(make_eval_batches(cfg, 2), evals)
    # With hf_eval_files, eval is those files, in order.
    given = data_config(
        "hf", hf_path=hf_path, data_files=data_files, eval_files=files["hf"]["text"][1].replace(".txt", ".jsonl"),
        hf_streaming=True, packing_type="concat", packing=packed,
    )  # fmt: skip
    first = make_eval_batches(given, 1)[0]
    tok = load_tokenizer(BUILTIN_TOKENIZER_PATH)
    doc0 = [tok.bos_id, *token_ids(texts())[0], tok.eos_id]  # file order: the first document leads
    n = min(len(doc0) - 1, 32)
    np.testing.assert_array_equal(first["inputs"][0, :n], doc0[:n])
    with pytest.raises(ValueError, match="hf_streaming packs records as they come"):
        make_train_iterator(data_config("hf", hf_path=hf_path, data_files=data_files, hf_streaming=True))
