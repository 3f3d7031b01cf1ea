"""MaxText.prepare_data: pre-tokenized shards and TFDS datasets, manifest, safe re-runs, nothing half-written."""

import json
import os

import pytest

from MaxText import prepare_data
from MaxText.input_pipeline import BUILTIN_TOKENIZER_PATH, load_tokenizer, pipeline, writers
from MaxText.tests.helpers import data_config, texts, token_ids


def _inputs(root) -> list:
    docs = texts()
    os.makedirs(root, exist_ok=True)
    with open(f"{root}/a.txt", "w", encoding="utf-8") as f:
        f.writelines(t + "\n\n" for t in docs[:10])  # blank lines are not documents
    with open(f"{root}/b.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": t}) + "\n" for t in docs[10:25])
    writers.write_parquet(f"{root}/c.parquet", {"body": docs[25:]})
    return docs


def _run(*args):
    return prepare_data.main(["--tokenizer", BUILTIN_TOKENIZER_PATH, "--column", "body", *args])


def test_array_record_shards_manifest_and_safe_rerun(tmp_path, monkeypatch, capsys):
    docs = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    real_write = writers.write_array_record

    def killed_on_b(path, records):
        if path.endswith("b.array_record"):
            list(zip(range(3), records))  # part of the shard, then the process dies
            raise KeyboardInterrupt
        return real_write(path, records)

    monkeypatch.setattr(writers, "write_array_record", killed_on_b)
    with pytest.raises(KeyboardInterrupt):
        _run("--input", f"{tmp_path}/in/*", "--output", str(out))
    assert sorted(os.listdir(out)) == ["a.array_record", "manifest.json"]  # nothing half-written
    monkeypatch.setattr(writers, "write_array_record", real_write)
    a_mtime = os.stat(out / "a.array_record").st_mtime_ns
    assert _run("--input", f"{tmp_path}/in/*", "--output", str(out)) == 0
    assert "a.array_record: already done, kept" in capsys.readouterr().err
    assert os.stat(out / "a.array_record").st_mtime_ns == a_mtime
    manifest = json.loads((out / "manifest.json").read_text())
    ids = token_ids(docs)
    assert manifest["documents"] == len(docs) and manifest["tokens"] == sum(map(len, ids))
    assert manifest["shards"]["c.array_record"]["tokens"] == sum(map(len, ids[25:]))
    prepared = data_config("grain", data_files=f"{out}/*.array_record", column="ids", tokenize=False)
    tokens = pipeline.user_token_docs(prepared, "train")[0]
    held_out = pipeline.user_token_docs(prepared, "eval")[0]
    assert len(tokens) + len(held_out) == len(docs)
    got = sorted(
        tuple(d.tokens[s : s + n].tolist()) for d in (tokens, held_out) for s, n in zip(d.starts, d.lengths)
    )
    tok = load_tokenizer(BUILTIN_TOKENIZER_PATH)
    assert got == sorted(tuple([tok.bos_id, *x, tok.eos_id]) for x in ids)  # BOS/EOS added at load time


def test_tfds_format_trains_as_tfds(tmp_path):
    docs = _inputs(tmp_path / "in")
    out = tmp_path / "tfds"
    assert (
        _run("--input", f"{tmp_path}/in/*", "--output", str(out), "--format", "tfds", "--name", "prep_test")
        == 0
    )
    cfg = data_config(
        "tfds", dataset_name="prep_test:1.0.0", dataset_path=str(out), column="ids", tokenize=False,
        add_bos=False, add_eos=False, eval_fraction=0.0,
    )  # fmt: skip
    got = pipeline.user_token_docs(cfg, "train")[0]
    want = token_ids(docs)
    assert sorted(tuple(got.tokens[s : s + n]) for s, n in zip(got.starts, got.lengths)) == sorted(
        map(tuple, want)
    )
    assert json.loads((out / "manifest.json").read_text())["tokens"] == sum(map(len, want))
    assert (
        _run("--input", f"{tmp_path}/in/*", "--output", str(out), "--format", "tfds", "--name", "prep_test")
        == 0
    )


def test_bad_input_exits_2(tmp_path, capsys):
    for args, message in [
        (["--input", f"{tmp_path}/none/*.txt"], "matches no file"),
        (["--input", f"{tmp_path}/x.jsonl"], "--column='body': missing in a record"),
    ]:
        (tmp_path / "x.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
        with pytest.raises(SystemExit) as exit_info:
            _run(*args, "--output", str(tmp_path / "o"))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not any(n.endswith(".array_record") for n in os.listdir(tmp_path / "o"))
