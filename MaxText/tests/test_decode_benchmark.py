"""benchmarks/decode_throughput.py runs end to end on a tiny config (int8w weights and the HF comparison, on
weights exported with maxtext_to_hf, included) and writes JSON; benchmarks/decode_paths.py times api,
DecodeSession and the server on one model and finds the same greedy tokens on all three."""

import json
import os
import sys

import pytest

from MaxText import paths
from MaxText.tests.helpers import run_benchmark

SCRIPT = os.path.join(paths.REPO_ROOT, "benchmarks", "decode_throughput.py")
PATHS_SCRIPT = os.path.join(paths.REPO_ROOT, "benchmarks", "decode_paths.py")


@pytest.mark.slow
def test_decode_throughput_writes_json(tmp_path):
    out = tmp_path / "result.json"
    cmd = [
        sys.executable, SCRIPT, "configs/base.yml", "model_name=test-tiny", "vocab_size=512",
        "logits_via_embedding=false", "--batches", "2", "--quant", ",int8w", "--prompt", "8", "--new", "6", "--repeats", "1",
        "--out", str(out),
    ]  # fmt: skip
    proc = run_benchmark(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [(row["quantization"], row["cache"], row["batch"]) for row in r["maxtext"]] == [
        ("", "contiguous", 2), ("", "paged", 2), ("int8w", "contiguous", 2), ("int8w", "paged", 2),
    ]  # fmt: skip
    for row in r["maxtext"]:
        assert row["decode_tokens_per_s"] > 0 and row["ttft_ms"] > 0 and row["prefill_ms"] > 0
        if not row["quantization"]:
            assert row["tokens_match_hf"], (row, r["huggingface"])  # same weights, same greedy tokens
        else:
            assert "tokens_match_float" in row and row["speedup_vs_hf_decode"] > 0
    hf = r["huggingface"][0]
    assert hf["decode_tokens_per_s"] > 0 and hf["torch_threads"] == len(os.sched_getaffinity(0))
    assert "decode tok/s" in proc.stdout


@pytest.mark.slow
def test_decode_paths_writes_json(tmp_path):
    out = tmp_path / "paths.json"
    cmd = [sys.executable, PATHS_SCRIPT, "--quick", "base_num_decoder_layers=2", "--out", str(out)]
    proc = run_benchmark(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["tree"] == paths.REPO_ROOT and r["maxtext_module"] == os.path.join(paths.REPO_ROOT, "MaxText")
    assert sorted(r["paths"]) == ["api", "server", "session"]
    for row in r["paths"].values():
        assert row["ttft_ms"] > 0 and row["decode_tokens_per_s"] > 0 and 0 < row["generated_tokens"] <= 2 * 8
    assert all(r["tokens_agree"].values()), r["tokens_agree"]
    assert "decode tok/s" in proc.stdout
