"""benchmarks/decode_throughput.py runs end to end on a tiny config (HF comparison included) and writes JSON."""

import json
import os
import subprocess
import sys

import pytest

from MaxText import paths
from MaxText.tests.test_benchmarks import _env_without_device_count

SCRIPT = os.path.join(paths.REPO_ROOT, "benchmarks", "decode_throughput.py")


@pytest.mark.slow
def test_decode_throughput_writes_json(tmp_path):
    out = tmp_path / "result.json"
    cmd = [
        sys.executable, SCRIPT, "configs/base.yml", "model_name=test-tiny", "vocab_size=512",
        "logits_via_embedding=false", "--batches", "2", "--prompt", "8", "--new", "6", "--repeats", "1",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=paths.REPO_ROOT, env=_env_without_device_count(), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [(row["cache"], row["batch"]) for row in r["maxtext"]] == [("contiguous", 2), ("paged", 2)]
    for row in r["maxtext"]:
        assert row["decode_tokens_per_s"] > 0 and row["ttft_ms"] > 0 and row["prefill_ms"] > 0
        assert row["tokens_match_hf"], (row, r["huggingface"])  # same weights, same greedy tokens
    assert r["huggingface"][0]["decode_tokens_per_s"] > 0
    assert "decode tok/s" in proc.stdout
