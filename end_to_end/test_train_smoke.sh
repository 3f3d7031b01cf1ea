#!/usr/bin/env bash
# Smoke test of the train CLI as a user runs it: a tiny model on synthetic data, from another directory,
# then checks the run directory (config.yml, metrics.jsonl with every field, TensorBoard events).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mktemp -d)"
trap 'rm -rf "${OUT}"' EXIT
cd "${OUT}"
python3 -m MaxText.train configs/base.yml model_name=test-tiny dataset_type=synthetic run_name=smoke \
  base_output_directory="${OUT}/runs" steps=6 log_period=3 eval_interval=3 eval_steps=1 max_target_length=32 \
  enable_checkpointing=false
python3 - "${OUT}/runs/smoke" <<'PY'
import json, os, sys
run = sys.argv[1]
records = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
steps = [r for r in records if "loss" in r]
assert [r["step"] for r in steps] == [3, 6], records
for key in ("loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "tflops_per_device", "mfu"):
    assert key in steps[-1], key
assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
assert os.path.isfile(os.path.join(run, "config.yml"))
assert os.listdir(os.path.join(run, "tensorboard"))
print("smoke ok:", steps[-1])
PY
