#!/usr/bin/env bash
# A user's path with a Hugging Face checkpoint, per family: build a tiny random Hugging Face model (with its
# special features on) and a tokenizer, convert it, train 5 steps from it, decode, export both the converted
# and the trained checkpoints back, then check the untrained export is bit-exact and the trained export
# gives the same logits in transformers as MaxText.api gives for the run.
#
#   bash end_to_end/hf_roundtrip.sh [FAMILY ...]   default (what CI runs): llama3 gemma2
#   FULL=1 bash end_to_end/hf_roundtrip.sh         every family: llama2 llama3 mistral gemma gemma2 gemma3 qwen3
#                                                  olmo3 and the MoE families mixtral qwen3_moe (also
#                                                  qwen3_moe_dense: a dense first layer) deepseek2 deepseek3
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALL_FAMILIES=(llama2 llama3 mistral gemma gemma2 gemma3 qwen3 olmo3 mixtral qwen3_moe qwen3_moe_dense deepseek2
  deepseek3)
if [[ $# -gt 0 ]]; then
  FAMILIES=("$@")
elif [[ "${FULL:-0}" == "1" ]]; then
  FAMILIES=("${ALL_FAMILIES[@]}")
else
  FAMILIES=(llama3 gemma2)
fi
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${HOME}/.cache/maxtext/jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
OUT="$(mktemp -d)"
trap 'rm -rf "${OUT}"' EXIT
python3 -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('transformers') and u.find_spec('torch')))" || {
  echo "hf_roundtrip: needs transformers and torch (the test dependencies; bash setup.sh installs them)" >&2
  exit 1
}

# One Python process builds every family's tiny model and tokenizer (importing transformers takes seconds):
# the parity tests' models, with each family's special features on (MaxText/tests/helpers.py).
python3 - "${OUT}" "${FAMILIES[@]}" <<'PY'
import sys

from MaxText.tests.helpers import PARITY_FAMILIES, make_hf_model

out, families = sys.argv[1], sys.argv[2:]
for family in families:
    if family not in PARITY_FAMILIES:
        sys.exit(f"hf_roundtrip: unknown family {family!r}; expected one of {', '.join(PARITY_FAMILIES)}")
    make_hf_model(family, f"{out}/{family}/hf")
PY

for FAMILY in "${FAMILIES[@]}"; do
  echo "===== ${FAMILY}"
  DIR="${OUT}/${FAMILY}"
  cd "${DIR}"
  python3 -m MaxText.convert hf_to_maxtext --input hf --output ckpt | tail -n 2
  python3 -m MaxText.train "${REPO}/configs/base.yml" run_name=ft base_output_directory="${DIR}/runs" \
    load_parameters_path="${DIR}/ckpt" dataset_type=synthetic steps=5 per_device_batch_size=2 max_target_length=32 \
    learning_rate=1e-2 log_period=5 eval_interval=0 eval_steps=1 checkpoint_period=5 | tee train.log | tail -n 3
  grep -q "loaded parameters from ${DIR}/ckpt" train.log
  python3 -m MaxText.decode "${REPO}/configs/base.yml" run_name=ft base_output_directory="${DIR}/runs" \
    prompt="To be|or not" max_prefill_predict_length=8 max_decode_steps=8 | tee decode.log
  grep -q "^----- prompt: 'or not'" decode.log
  python3 -m MaxText.convert maxtext_to_hf --input ckpt --output back | tail -n 1
  python3 -m MaxText.convert maxtext_to_hf --input runs/ft --output trained | tail -n 1
  cd "${OUT}"
done

# One Python process compares every family: the untrained export must be bit-exact, and transformers on the
# trained export must give MaxText.api's logits for the run.
python3 - "${OUT}" "${FAMILIES[@]}" <<'PY'
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import load_file

from MaxText import api

out, families = sys.argv[1], sys.argv[2:]
ids = np.random.default_rng(0).integers(0, 300, size=(2, 24))
for family in families:
    d = f"{out}/{family}"
    source, back = load_file(f"{d}/hf/model.safetensors"), load_file(f"{d}/back/model.safetensors")
    assert source.keys() == back.keys(), source.keys() ^ back.keys()
    for name, x in source.items():
        assert x.dtype == back[name].dtype and torch.equal(x.view(torch.uint8), back[name].view(torch.uint8)), name
    trained = load_file(f"{d}/trained/model.safetensors")
    assert any(not torch.equal(trained[k], source[k]) for k in source), "training changed no weight"
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        f"{d}/trained", dtype=torch.float32, attn_implementation="eager"  # soft caps need eager
    ).eval()
    with torch.no_grad():
        ref = hf(torch.as_tensor(ids)).logits.numpy()
    diff = float(np.abs(api.load(f"{d}/runs/ft").logits(ids) - ref).max())
    assert diff <= 1e-4, (family, diff)
    print(f"{family}: round trip bit-exact ({len(source)} tensors); trained export vs MaxText.api logits: {diff:.2e}")
PY
echo "hf_roundtrip ok: ${FAMILIES[*]}"
