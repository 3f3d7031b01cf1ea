"""Supervised fine-tuning data: the loss mask is exactly the assistant's tokens, through every template, format,
packing mode, pre-tokenization and the trainer (trained_tokens, eval, bitwise resume); bad records are one line.
"""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from MaxText import paths, prepare_data
from MaxText.config import ConfigError, load_config
from MaxText.input_pipeline import (
    BUILTIN_TOKENIZER_PATH,
    load_chat_template,
    load_tokenizer,
    make_eval_batches,
    make_train_iterator,
    pipeline,
    writers,
)
from MaxText.input_pipeline import iterators, packing, sources
from MaxText.input_pipeline.sources import DataError
from MaxText.tests.helpers import data_config, save_random_params, step_records
from MaxText.training import trainer

SFT_YML = os.path.join(paths.REPO_ROOT, "configs", "sft.yml")
# ChatML-like: special markers, and a raise_exception for roles it does not know.
CHATML = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# No generation marker at all: add_generation_prompt changes nothing.
NO_MARKER = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
# What each template makes of an assistant message's content: the span that trains.
TRAINED_TEXT = {
    "default": lambda c: f" {c}\n",
    "chatml": lambda c: f"{c}<|im_end|>\n",
    "no_marker": lambda c: f"<assistant>{c}</assistant>",
}
TEMPLATES = {"default": "", "chatml": CHATML, "no_marker": NO_MARKER}
WORDS = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "mind"]


def _conversations(n: int = 24, seed: int = 0) -> list[list[dict]]:
    """n conversations of one or two user/assistant turns (some with a system message)."""
    rng = np.random.default_rng(seed)

    def words(k):
        return " ".join(rng.choice(WORDS, size=int(rng.integers(1, k))))

    out = []
    for i in range(n):
        turns = [{"role": "system", "content": f"sys {words(3)}"}] if i % 3 == 0 else []
        for t in range(1 + i % 2):
            turns += [
                {"role": "user", "content": f"q{i}.{t} {words(5)}"},
                {"role": "assistant", "content": f"a{i}.{t} {words(6)}"},
            ]
        out.append(turns)
    return out


def _write_jsonl(path, records: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def _hf(tmp_path, records, name="chat", **kw):
    """An hf json SFT config over `records`, every record in train (the eval file is another one)."""
    train = _write_jsonl(tmp_path / f"{name}.jsonl", records)
    evals = _write_jsonl(tmp_path / f"{name}_eval.jsonl", records[:4])
    base = dict(hf_path="json", data_files=train, eval_files=evals, column="messages", use_sft=True)
    base["max_target_length"] = 256
    base.update(kw)
    return data_config("hf", **base)


def _docs(cfg):
    return pipeline.user_token_docs(cfg, "train")[0]


def _doc(docs, k):
    s, n = int(docs.starts[k]), int(docs.lengths[k])
    return docs.tokens[s : s + n], docs.loss_mask[s : s + n]


def _trained_text(tok, ids, mask) -> str:
    """The text of the tokens that count as targets (a document's first token never is one)."""
    return tok.decode(ids[1:][mask[1:] == 1])


@pytest.fixture(name="tok", scope="module")
def tok_fixture():
    return load_tokenizer(BUILTIN_TOKENIZER_PATH)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_mask_is_exactly_the_assistant_spans(tmp_path, tok, template):
    convs = _conversations()
    cfg = _hf(tmp_path, [{"messages": c} for c in convs], chat_template=TEMPLATES[template])
    docs = _docs(cfg)
    renderer = load_chat_template(TEMPLATES[template], BUILTIN_TOKENIZER_PATH)
    assert len(docs) == len(convs)
    for k, conv in enumerate(convs):
        ids, mask = _doc(docs, k)
        expected = "".join(TRAINED_TEXT[template](m["content"]) for m in conv if m["role"] == "assistant")
        assert _trained_text(tok, ids, mask) == expected
        assert tok.decode(ids) == renderer.render(conv, add_generation_prompt=False)  # nothing lost or added
        assert ids[0] == tok.bos_id and mask[0] == 0 and ids[-1] == tok.eos_id and mask[-1] == 1
        if len(conv) - (conv[0]["role"] == "system") == 2:  # one turn: the prompt is what the server sends
            prompt = [tok.bos_id] + tok.encode(renderer.render(conv[:-1], add_generation_prompt=True))
            np.testing.assert_array_equal(ids[: len(prompt)], prompt)
            assert not mask[: len(prompt)].any() and mask[len(prompt)]


def test_prompt_completion_strings_and_conversational(tmp_path, tok):
    plain = [{"prompt": f"Q{i}: to be?", "completion": f" A{i}: not to be"} for i in range(12)]
    docs = _docs(_hf(tmp_path, plain, "plain", column="prompt,completion"))
    for k, r in enumerate(plain):
        ids, mask = _doc(docs, k)
        np.testing.assert_array_equal(
            ids, [tok.bos_id, *tok.encode(r["prompt"]), *tok.encode(r["completion"]), tok.eos_id]
        )
        assert _trained_text(tok, ids, mask) == r["completion"] and mask[-1] == 1  # EOS ends the completion
    columns = {k: [r[k] for r in plain] for k in ("prompt", "completion")}
    writers.write_parquet(str(tmp_path / "pc.parquet"), {**columns, "other": ["x"] * len(plain)})
    writers.write_parquet(str(tmp_path / "pc_eval.parquet"), columns)
    parquet = data_config(
        "grain", data_files=str(tmp_path / "pc.parquet"), eval_files=str(tmp_path / "pc_eval.parquet"),
        column="prompt,completion", use_sft=True, max_target_length=256,
    )  # fmt: skip
    for field in ("tokens", "lengths", "loss_mask"):  # Parquet reads both columns
        np.testing.assert_array_equal(getattr(_docs(parquet), field), getattr(docs, field))
    convs = _conversations(12, seed=1)
    chat = [{"prompt": c[:-1], "completion": c[-1:]} for c in convs]
    docs = _docs(_hf(tmp_path, chat, "conv", column="prompt,completion", chat_template=CHATML))
    for k, conv in enumerate(convs):
        ids, mask = _doc(docs, k)  # only the completion trains, not the prompt's earlier assistant turn
        assert _trained_text(tok, ids, mask) == f"{conv[-1]['content']}<|im_end|>\n"


def test_overlong_truncated_or_dropped_and_untrained_dropped(tmp_path, tok):
    def chat(user, reply=None):
        turns = [{"role": "user", "content": user}]
        return {"messages": turns + ([{"role": "assistant", "content": reply}] if reply else [])}

    long_text = " ".join(["question"] * 60)
    records = [chat(f"q{i}", f"a{i} be") for i in range(10)]
    records += [chat("hi", long_text)] * 3 + [chat(long_text, "ok"), chat("nobody answers")]
    counts = {}
    for overlong in ("truncate", "drop"):
        cfg = _hf(
            tmp_path, records, overlong, max_target_length=32, sft_overlong=overlong, global_batch_size=2
        )
        counts[overlong] = dict(make_train_iterator(cfg).stats)
        docs = _docs(cfg)
        assert max(docs.lengths) <= 33 and (docs.lengths[:10] > 0).all()
        assert (docs.lengths[10:] == 0).sum() == (5 if overlong == "drop" else 2)
        if overlong == "truncate":  # cut to T + 1 tokens, the head kept, the reply's part trained
            ids, mask = _doc(docs, 10)
            assert len(ids) == 33 and mask[-1] == 1 and tok.decode(ids).startswith("user: hi\nassistant:")
    trained = {k: v.pop("trained_tokens") for k, v in counts.items()}
    assert counts["truncate"] == {
        "records": 15,
        "truncated": 3,
        "dropped_overlong": 0,
        "dropped_untrained": 2,
    }
    assert counts["drop"] == {"records": 15, "truncated": 0, "dropped_overlong": 4, "dropped_untrained": 1}
    short = sum(len(tok.encode(f" a{i} be\n")) + 1 for i in range(10))  # + EOS
    assert trained["drop"] == short and trained["truncate"] > short


def _segments(batch, r):
    """[(inputs, targets, targets_segmentation > 0)] of the segments of row r."""
    seg = batch["inputs_segmentation"][r]
    out = []
    for s in sorted(set(seg[seg > 0].tolist())):
        at = seg == s
        out.append(
            (batch["inputs"][r][at], batch["targets"][r][at], batch["targets_segmentation"][r][at] > 0)
        )
    return out


@pytest.mark.parametrize("mode", ["first_fit", "concat", "no_packing"])
def test_mask_survives_every_packing_mode(tmp_path, tok, mode):
    """One lane epoch of rows: the trained targets, laid end to end, are exactly the lane's assistant tokens,
    and (first_fit, packing=false) every segment is one whole conversation, apart from the others."""
    convs = _conversations(40)
    path = str(tmp_path / "chat.array_record")
    writers.write_array_record(path, [{"messages": c} for c in convs])
    packed = {"packing": mode != "no_packing", "packing_type": "concat" if mode == "concat" else "first_fit"}
    cfg = data_config(
        "grain", data_files=path, column="messages", use_sft=True, max_target_length=256,
        global_batch_size=2, chat_template=CHATML, **packed,
    )  # fmt: skip
    it = make_train_iterator(cfg)
    renderer = load_chat_template(CHATML, BUILTIN_TOKENIZER_PATH)
    by_text = {renderer.render(c, add_generation_prompt=False): c for c in convs}
    for source in it.lane_sources.values():
        docs, layout = source.docs, source.layout(0)
        assert source.pieces.lengths.max() < 256  # no conversation was truncated or cut into pieces
        batches = [source.materialize([(layout, r)]) for r in range(layout.num_rows)]
        got = []
        for b in batches:
            assert (
                (b["targets_segmentation"] == 0) | (b["targets_segmentation"] == b["inputs_segmentation"])
            ).all()
            for inputs, targets, mask in _segments(b, 0):
                got.append(targets[mask])
                if mode == "concat":
                    continue
                conv = by_text[tok.decode([*inputs, targets[-1]])]  # a whole conversation, BOS to EOS
                assert inputs[0] == tok.bos_id and targets[-1] == tok.eos_id
                assert tok.decode(targets[mask]) == "".join(
                    f"{m['content']}<|im_end|>\n" for m in conv if m["role"] == "assistant"
                )
        visited = [int(p) for p in source.epoch_pieces(0)]
        if mode != "concat":  # first_fit reorders whole pieces; compare as sets of conversations
            got = sorted(got, key=lambda t: t.tolist())
        want = []
        for p in visited:
            s, n = int(source.pieces.starts[p]), int(source.pieces.lengths[p])
            want.append(docs.tokens[s + 1 : s + n + 1][docs.loss_mask[s + 1 : s + n + 1] == 1])
        if mode != "concat":
            want = sorted(want, key=lambda t: t.tolist())
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    if mode == "first_fit":
        assert max(len(_segments(next(it), r)) for r in range(2)) >= 2  # packed rows do hold several


def test_completion_only_false_trains_every_token_and_eval_keeps_the_mask(tmp_path):
    records = [{"messages": c} for c in _conversations()]
    every = next(make_train_iterator(_hf(tmp_path, records, "all", sft_completion_only=False)))
    np.testing.assert_array_equal(every["targets_segmentation"], every["inputs_segmentation"])
    cfg = _hf(tmp_path, records, "mask")
    batch = next(make_train_iterator(cfg))
    assert (
        0 < batch["targets_segmentation"].astype(bool).sum() < batch["inputs_segmentation"].astype(bool).sum()
    )
    (evals,) = make_eval_batches(cfg, 1)
    assert (
        0 < evals["targets_segmentation"].astype(bool).sum() < evals["inputs_segmentation"].astype(bool).sum()
    )


def test_fingerprint_covers_the_mask():
    docs = packing.TokenizedDocs.from_sequences([[1, 5, 6, 2]], [[0, 0, 1, 1]])
    other = packing.TokenizedDocs.from_sequences([[1, 5, 6, 2]], [[0, 1, 1, 1]])
    plain = packing.TokenizedDocs.from_sequences([[1, 5, 6, 2]])
    assert len({iterators.docs_fingerprint(d) for d in (docs, other, plain)}) == 3


def test_prepare_data_sft_round_trip_equals_on_the_fly(tmp_path):
    convs = _conversations(30, seed=2)
    src = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in convs])
    out = tmp_path / "prepared"
    args = ["--sft", "--column", "messages", "--chat-template", CHATML, "--input", src, "--output", str(out)]
    assert prepare_data.main(["--tokenizer", BUILTIN_TOKENIZER_PATH, *args]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sft"]["columns"] == "messages" and manifest["documents"] == len(convs)
    common = dict(use_sft=True, chat_template=CHATML, max_target_length=96)  # some records truncated
    on_the_fly = data_config("hf", hf_path="json", data_files=src, column="messages", **common)
    prepared = data_config(
        "grain", data_files=f"{out}/*.array_record", column="ids", tokenize=False, **common
    )
    for split in ("train", "eval"):
        a, b = _docs_of(on_the_fly, split), _docs_of(prepared, split)
        for field in ("tokens", "lengths", "loss_mask"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    source = sources.JsonArrayRecordSource([str(out / "chat.array_record")], "test")
    rows = [source[i] for i in range(len(source))]
    writers.write_parquet(
        str(tmp_path / "ids.parquet"), {k: [r[k] for r in rows] for k in ("ids", "loss_mask")}
    )
    parquet = dataclasses.replace(prepared, data_files=str(tmp_path / "ids.parquet"))
    for field in ("tokens", "loss_mask"):  # Parquet reads the mask beside the ids
        np.testing.assert_array_equal(getattr(_docs(parquet), field), getattr(_docs(prepared), field))
    stats = make_train_iterator(on_the_fly).stats
    assert stats == make_train_iterator(prepared).stats and stats["truncated"] > 0
    bare = str(tmp_path / "bare.array_record")
    writers.write_array_record(bare, [{"ids": [5, 6, 7]}] * 3)
    no_mask = dataclasses.replace(prepared, data_files=bare)
    with pytest.raises(DataError, match="bare.array_record.* record 0: has no 'loss_mask' column"):
        _docs(no_mask)
    assert _docs(dataclasses.replace(no_mask, sft_completion_only=False)).loss_mask.all()


def _docs_of(cfg, split):
    return pipeline.user_token_docs(cfg, split)[0]


BAD = [
    (
        {"messages": "hello"},
        "record 1: column 'messages' is not a non-empty list of {role, content} messages",
    ),
    ({"messages": [{"role": "user"}]}, r"record 1: messages\[0\] is not a \{role, content\} message"),
    (
        {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
        "record 1: chat template: unknown role tool",
    ),
    (
        {"text": "no messages here"},
        "record 1: train_data_columns='messages': no column 'messages' in this record",
    ),
]


@pytest.mark.parametrize("record,message", BAD)
def test_bad_records_are_one_line_naming_the_record(tmp_path, record, message):
    path = str(tmp_path / "chat.array_record")
    writers.write_array_record(path, [{"messages": _conversations(1)[0]}, record] * 2)
    cfg = data_config("grain", data_files=path, column="messages", use_sft=True, chat_template=CHATML)
    with pytest.raises(DataError, match=message) as e:
        for split in ("train", "eval"):  # the bad records may be held out
            _docs_of(cfg, split)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"grain_train_files: '{path}' record 1: ")


def test_bad_data_exits_2_through_the_trainer(tmp_path):
    """A bad record, an unsupported dataset_type and a template whose renders are not prefixes are one-line
    errors; through the trainer, config errors (exit 2)."""
    files = _write_jsonl(tmp_path / "c.jsonl", [{"messages": "oops"}] * 4)
    cfg = load_config([SFT_YML, "model_name=test-tiny", "vocab_size=4096", f"hf_data_files={files}"])
    with pytest.raises(
        ConfigError, match=r"dataset_type='hf': hf_path='json' \(.*c.jsonl\) record 0: column"
    ):
        trainer._open_data(cfg, trainer.data_config(cfg, 8))
    for dataset_type in ("builtin", "synthetic"):
        with pytest.raises(
            ConfigError, match=f"use_sft=true: dataset_type='{dataset_type}' holds no conversations"
        ):
            load_config([SFT_YML, f"dataset_type={dataset_type}"])
    with pytest.raises(ConfigError, match="expected hf_streaming=false"):
        load_config([SFT_YML, "hf_streaming=true", "packing_type=concat"])
    reverses = "{% for m in messages|reverse %}{{ m['content'] }};{% endfor %}"  # later turns come first
    with pytest.raises(DataError, match=r"g.jsonl\) record 0: the chat template.* not a prefix"):
        _docs(_hf(tmp_path, [{"messages": _conversations(2)[1]}] * 4, "g", chat_template=reverses))


def _train_cfg(root, run_name, files, ckpt, *extra):
    return load_config(
        [SFT_YML, "model_name=test-tiny", "vocab_size=4096", "max_target_length=32", "per_device_batch_size=1",
         "steps=4", "learning_rate=1e-3", "learning_rate_schedule_steps=4", "checkpoint_period=2",
         "max_num_checkpoints_to_keep=0", "async_checkpointing=false", "log_period=1", "eval_interval=2",
         "eval_steps=1", "eval_split_fraction=0.25", "peak_tflops_per_device=1", f"hf_data_files={files}",
         f"load_parameters_path={ckpt}", f"base_output_directory={root}", f"run_name={run_name}", *extra]
    )  # fmt: skip


def test_sft_yml_trains_logs_trained_tokens_and_resumes_bitwise(tmp_path, capsys):
    files = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in _conversations(48, seed=3)])
    cfg = _train_cfg(tmp_path, "a", files, "")
    ckpt = save_random_params(str(tmp_path / "base"), cfg)
    cfg = _train_cfg(tmp_path, "a", files, ckpt)
    assert trainer.train(cfg) == 0
    out = capsys.readouterr().out
    assert "sft data (train records this host read): " in out and "loaded parameters from" in out
    assert " | trained " in out
    shutil.copytree(tmp_path / "a" / "checkpoints" / "2", tmp_path / "b" / "checkpoints" / "2")
    assert trainer.train(_train_cfg(tmp_path, "b", files, ckpt)) == 0
    records = step_records(tmp_path / "a")
    first = next(make_train_iterator(trainer.data_config(cfg, 8)))
    assert records[0]["trained_tokens"] == int(first["targets_segmentation"].astype(bool).sum())
    assert 0 < records[0]["trained_tokens"] < 8 * 32
    resumed = step_records(tmp_path / "b")
    assert [(r["step"], r["loss"]) for r in resumed] == [(r["step"], r["loss"]) for r in records[2:]]
    assert [r["trained_tokens"] for r in resumed] == [r["trained_tokens"] for r in records[2:]]
    with open(tmp_path / "a" / "metrics.jsonl", encoding="utf-8") as f:
        evals = [r for r in map(json.loads, f) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(np.isfinite([r["eval_loss"] for r in evals]))
    assert jax.device_count() == 8
