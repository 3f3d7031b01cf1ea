#!/usr/bin/env bash
# A user's path on the built-in corpus: train a small model, stop, resume the same run to more steps,
# then generate from it. Checks the resumed run continued (not restarted) and that decode printed text.
set -euo pipefail
OUT="$(mktemp -d)"
trap 'rm -rf "${OUT}"' EXIT
cd "${OUT}"
COMMON=(configs/base.yml run_name=e2e base_output_directory="${OUT}/runs" base_emb_dim=64 base_mlp_dim=128
  base_num_query_heads=2 base_num_kv_heads=2 head_dim=32 base_num_decoder_layers=2 max_target_length=64
  per_device_batch_size=4 log_period=5 eval_interval=10 eval_steps=2 checkpoint_period=5)

python3 -m MaxText.train "${COMMON[@]}" steps=10 | tee train1.log
python3 -m MaxText.train "${COMMON[@]}" steps=20 | tee train2.log
grep -q "resumed run 'e2e' from step 10" train2.log
python3 - "${OUT}/runs/e2e/metrics.jsonl" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
steps = [r["step"] for r in records if "loss" in r]
assert steps == [5, 10, 15, 20], steps
bpb = [r["eval_bits_per_byte"] for r in records if "eval_bits_per_byte" in r]
assert len(bpb) == 2 and bpb[1] < bpb[0], bpb
print("resume ok; eval bits/byte:", bpb)
PY
python3 -m MaxText.decode configs/base.yml run_name=e2e base_output_directory="${OUT}/runs" \
  prompt="ROMEO:|JULIET:" max_decode_steps=16 max_prefill_predict_length=16 | tee decode.log
grep -q "^----- prompt: 'JULIET:'" decode.log
grep -qE "time to first token [0-9.]+ ms \| [0-9,.]+ tokens/s" decode.log
echo "train -> resume -> decode ok"
