"""Loader throughput (tokens/s of the input pipeline alone, no model) per dataset_type and file format.

    python3 benchmarks/data_throughput.py [--docs N] [--batches K] [--out PATH]

Writes the built-in Shakespeare documents (the first N; 1,202 = all, ~1.4M tokens) in every format the
loader reads: grain ArrayRecord (text, and pretokenized ids from MaxText.prepare_data), grain Parquet,
grain mixture of both, hf json/parquet (in memory, and json streamed), tfds (array_record). Then, at the reference model's batch shape
(global batch 4 x T 256, vocab 32000) it measures for each:
  open_s          make_train_iterator: read and tokenize the records (one host: all of them), cut pieces,
  tokens_per_s    steady state: K batches of 4 x 256 tokens / their wall time (next() only),
  with_open_tokens_per_s  the same K batches, the open time included.
The loader must beat 10x the reference model's training tokens/s (taken from the newest
benchmarks/results/reference_cpu_*.json, else 1,436 measured on the 2-core dev machine). Results go to
stdout and a JSON file under benchmarks/results/ unless --out names one.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# pylint: disable=wrong-import-position
from results_io import write_record  # noqa: E402

from MaxText import prepare_data  # noqa: E402
from MaxText.input_pipeline import (  # noqa: E402
    BUILTIN_CORPUS_PATH,
    BUILTIN_TOKENIZER_PATH,
    DataConfig,
    builtin_corpus,
    make_train_iterator,
    writers,
)

REFERENCE_TRAIN_TOKENS_PER_S = 1436.0  # benchmarks/results/reference_cpu_2core_20261123.json, dense_dot


def reference_train_tokens_per_s() -> float:
    """Training tokens/s of the reference model from the newest recorded run (dense_dot summary)."""
    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "benchmarks", "results", "reference_cpu_*.json")))[
        ::-1
    ]:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f).get("summary", {})
        if "dense_dot" in summary:
            return float(summary["dense_dot"]["tokens_per_s"])
    return REFERENCE_TRAIN_TOKENS_PER_S


def write_formats(root: str, num_docs: int) -> dict:
    """The corpus in every format; returns name -> DataConfig overrides."""
    docs = list(builtin_corpus.load_documents(BUILTIN_CORPUS_PATH))[:num_docs]
    half = len(docs) // 2
    writers.write_array_record(f"{root}/text-0.array_record", [{"text": t} for t in docs[:half]])
    writers.write_array_record(f"{root}/text-1.array_record", [{"text": t} for t in docs[half:]])
    writers.write_parquet(f"{root}/text.parquet", {"text": docs})
    with open(f"{root}/text.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in docs)
    os.makedirs(f"{root}/in", exist_ok=True)
    os.symlink(f"{root}/text.parquet", f"{root}/in/corpus.parquet")
    quiet = ["--tokenizer", BUILTIN_TOKENIZER_PATH, "--input", f"{root}/in/*.parquet"]
    prepare_data.main([*quiet, "--output", f"{root}/ids"])
    prepare_data.main([*quiet, "--output", f"{root}/tfds", "--format", "tfds", "--name", "bench_corpus"])
    ids = {"column": "ids", "tokenize": False}
    return {
        "grain_array_record_text": {"dataset_type": "grain", "data_files": f"{root}/text-*.array_record"},
        "grain_parquet_text": {"dataset_type": "grain", "data_files": f"{root}/text.parquet"},
        "grain_array_record_ids": {
            "dataset_type": "grain",
            "data_files": f"{root}/ids/*.array_record",
            **ids,
        },
        "grain_mixture_text": {
            "dataset_type": "grain",
            "data_files": f"{root}/text-*.array_record:0.7;{root}/text.parquet:0.3",
        },
        "hf_json_text": {"dataset_type": "hf", "hf_path": "json", "data_files": f"{root}/text.jsonl"},
        "hf_parquet_text": {"dataset_type": "hf", "hf_path": "parquet", "data_files": f"{root}/text.parquet"},
        "hf_json_text_streaming": {
            "dataset_type": "hf",
            "hf_path": "json",
            "data_files": f"{root}/text.jsonl",
            "hf_streaming": True,
            "packing_type": "concat",
        },
        "tfds_ids": {
            "dataset_type": "tfds",
            "dataset_name": "bench_corpus:1.0.0",
            "dataset_path": f"{root}/tfds",
            **ids,
        },
    }


def measure(overrides: dict, batches: int) -> dict:
    """Open time and tokens/s of `batches` batches at the reference shape for one source."""
    cfg = DataConfig(
        tokenizer_path=BUILTIN_TOKENIZER_PATH,
        max_target_length=256,
        global_batch_size=4,
        vocab_size=32000,
        data_shuffle_seed=0,
        **overrides,
    )
    start = time.perf_counter()
    it = make_train_iterator(cfg)
    open_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    run_s = time.perf_counter() - start
    tokens = batches * 4 * 256
    return {
        "open_s": open_s,
        "batches": batches,
        "tokens_per_s": tokens / run_s,
        "with_open_tokens_per_s": tokens / (run_s + open_s),
        # Each new (lane) epoch's layout is computed inside next(); streaming has one global epoch counter.
        "epochs_crossed": max(it.lane_epochs()) if hasattr(it, "lane_epochs") else it.get_state()["epoch"],
    }


def main(argv) -> int:
    """Runs every source; exit code 1 when one is below 10x the training tokens/s."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--docs", type=int, default=1202, help="built-in documents to use (1202 = all)")
    parser.add_argument("--batches", type=int, default=2000, help="timed batches of 4 x 256 tokens")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    train = reference_train_tokens_per_s()
    rows = {}
    with tempfile.TemporaryDirectory() as root:
        formats = write_formats(root, args.docs)
        for name, overrides in formats.items():
            rows[name] = measure(overrides, args.batches)
            r = rows[name]
            r["x_training"] = r["tokens_per_s"] / train
            print(
                f"{name:26s} open {r['open_s']:6.2f}s  {r['tokens_per_s']:>12,.0f} tokens/s "
                f"({r['x_training']:.0f}x training)  with open {r['with_open_tokens_per_s']:>10,.0f} tokens/s",
                flush=True,
            )
    record = {
        "benchmark": "data_throughput",
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "shape": {"global_batch_size": 4, "max_target_length": 256, "vocab_size": 32000},
        "documents": args.docs,
        "reference_train_tokens_per_s": train,
        "required_tokens_per_s": 10 * train,
        "results": rows,
        "all_pass": all(r["tokens_per_s"] >= 10 * train for r in rows.values()),
    }
    print(f"written to {write_record(record, args.out, 'data_throughput')}")
    return 0 if record["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
