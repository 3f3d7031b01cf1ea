#!/usr/bin/env bash
# A fine-tuning scenario that visibly learns on a laptop CPU: pretrain a base on the built-in Shakespeare
# corpus, generate an instruction set with exact answers ("copy: king you sir love" -> "king you sir love",
# MaxText/input_pipeline/build_task_data.py), fine-tune the base with LoRA on it (configs/sft.yml), measure
# exact-match accuracy of greedy replies on held-out prompts before and after, export the base to Hugging
# Face and the adapters to PEFT, read the adapter back (peft_to_lora) and check that the reloaded model gives
# bit-identical logits and the same greedy tokens, and that transformers + PEFT on the export give our logits
# and greedy tokens (skipped without torch/peft). Fails (non-zero) when any of these checks fails.
#
#   bash end_to_end/sft_lora_task.sh           smoke size (what CI runs): a tiny model, 50 + 50 steps, checks
#                                              the pipeline and the round trip, not learning; 45-70 s on 2 cores
#   FULL=1 bash end_to_end/sft_lora_task.sh    the quickstart model (base.yml) pretrained 300 steps, then LoRA
#                                              rank 16 for 400 steps: exact match 0% -> 100%; 4-6 min on 2 cores
#   OUT_DIR=DIR ...                            keep the work directory (data, runs, exports, result.json)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${HOME}/.cache/maxtext/jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
if [[ -n "${OUT_DIR:-}" ]]; then
  WORK="$(mkdir -p "${OUT_DIR}" && cd "${OUT_DIR}" && pwd)"
  if [[ -e "${WORK}/runs" ]]; then
    echo "sft_lora_task: ${WORK}/runs exists; give OUT_DIR a new directory (runs there would resume)" >&2
    exit 2
  fi
else
  WORK="$(mktemp -d)"
  trap 'rm -rf "${WORK}"' EXIT
fi
cd "${WORK}"
START="${EPOCHREALTIME}"
elapsed() { awk -v a="${START}" -v b="${EPOCHREALTIME}" 'BEGIN { printf "%.0f", b - a }'; }

if [[ "${FULL:-0}" == "1" ]]; then
  SIZE="full"
  MODEL=()  # base.yml's model: D=256, 4 layers, 5.2M params (the quickstart's)
  BASE=(steps=300 log_period=50 eval_interval=100)
  SFT=(steps=400 log_period=50 eval_interval=100 eval_steps=4)
  N_TRAIN=4000 N_EVAL=100
else
  SIZE="smoke"
  MODEL=(base_emb_dim=64 base_mlp_dim=128 base_num_query_heads=2 base_num_kv_heads=2 head_dim=32
    base_num_decoder_layers=2)
  BASE=(steps=50 log_period=25 eval_interval=0 eval_steps=1 max_target_length=64 per_device_batch_size=4)
  SFT=(steps=50 log_period=25 eval_interval=0 eval_steps=1)
  N_TRAIN=1000 N_EVAL=16
fi
LORA=(lora_rank=16 lora_alpha=32 learning_rate=3e-3 max_target_length=64 per_device_batch_size=8)
echo "===== sft_lora_task (${SIZE}) in ${WORK}"

python3 -m MaxText.input_pipeline.build_task_data --output data --train "${N_TRAIN}" --eval "${N_EVAL}"

echo "===== pretrain the base on the built-in corpus"
python3 -m MaxText.train "${REPO}/configs/base.yml" run_name=base base_output_directory="${WORK}/runs" \
  "${MODEL[@]}" "${BASE[@]}" checkpoint_period=1000 | tee base.log | grep -E '^(step|trained|model:)'

echo "===== fine-tune with LoRA"
python3 -m MaxText.train "${REPO}/configs/sft.yml" run_name=lora base_output_directory="${WORK}/runs" \
  load_parameters_path="${WORK}/runs/base" hf_data_files="${WORK}/data/train.jsonl" \
  hf_eval_files="${WORK}/data/eval.jsonl" "${MODEL[@]}" "${LORA[@]}" "${SFT[@]}" checkpoint_period=1000 |
  tee lora.log | grep -E '^(step|trained|trainable|sft data)'
grep -q "loaded parameters from ${WORK}/runs/base" lora.log

echo "===== exact match on the ${N_EVAL} held-out prompts, greedy"
python3 "${REPO}/end_to_end/task_accuracy.py" score --data data/eval.jsonl --out result.json \
  before="${WORK}/runs/base" after="${WORK}/runs/lora" | tee score.log

echo "===== export (base -> Hugging Face, adapters -> PEFT) and read the adapter back"
python3 -m MaxText.convert maxtext_to_hf --input runs/base --output hf/base | tail -n 1
python3 -m MaxText.convert lora_to_peft --input runs/lora --output hf/lora | tail -n 1
python3 -m MaxText.convert peft_to_lora --input hf/lora --base runs/base --output runs/from_peft | tail -n 1
python3 "${REPO}/end_to_end/task_accuracy.py" reload --data data/eval.jsonl --result result.json \
  --hf-base hf/base --peft hf/lora --adapter runs/from_peft | tee reload.log

BEFORE="$(grep '^exact-match before: ' score.log)"
AFTER="$(grep '^exact-match after: ' score.log)"
RELOADED="$(grep '^exact-match reloaded' reload.log)"
grep -q '^round trip: greedy tokens equal .* (bit-exact: 0)' reload.log
echo "===== sft_lora_task (${SIZE}) ok in $(elapsed)s"
echo "${BEFORE}"
echo "${AFTER}"
echo "${RELOADED}"
if [[ -n "${OUT_DIR:-}" ]]; then echo "result: ${WORK}/result.json"; fi
