"""A checkpoint written by main at e5be66e (before Architecture II) restores and continues bitwise.

fixtures/run_e5be66e/ is a run directory as e5be66e left it after `steps=2` of the command below: the train
state (params and AdamW's mu/nu/count), the builtin data iterator's position and the meta. expected.json
holds what e5be66e printed and saved when it resumed that run to step 4: the losses, learning rates and
gradient norms of steps 3 and 4, the eval loss, the data position and a sha256 of every leaf of the step-4
train state. The resumed run here must reproduce all of it exactly, so a refactor that changes the
checkpoint layout, the data order, the optimizer or any number shows up as a failure.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from MaxText import paths

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "run_e5be66e")
ARGS = [
    "model_name=test-tiny",
    "vocab_size=4096",
    "dataset_type=builtin",
    "max_target_length=64",
    "per_device_batch_size=2",
    "learning_rate_schedule_steps=4",
    "checkpoint_period=2",
    "log_period=1",
    "eval_interval=0",
    "eval_steps=1",
    "peak_tflops_per_device=1",
]


def state_digest(state_dir: str) -> dict:
    """{leaf path: sha256 prefix, dtype and shape} of an orbax train state, read without our code."""
    tree = ocp.PyTreeCheckpointer().restore(state_dir)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.asarray(leaf)
        out[jax.tree_util.keystr(path)] = (
            hashlib.sha256(a.tobytes()).hexdigest()[:16] + f" {a.dtype}{list(a.shape)}"
        )
    return out


def test_e5be66e_checkpoint_resumes_bitwise(tmp_path):
    with open(os.path.join(FIXTURE, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    shutil.copytree(FIXTURE, tmp_path / "fx", ignore=shutil.ignore_patterns("expected.json"))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as the fixture was written
    cmd = [sys.executable, "-m", "MaxText.train", "configs/base.yml", "run_name=fx"]
    cmd += [f"base_output_directory={tmp_path}", "steps=4", *ARGS]
    proc = subprocess.run(
        cmd, cwd=paths.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "resumed run 'fx' from step 2" in proc.stdout

    with open(tmp_path / "fx" / "metrics.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    steps = {str(r["step"]): {k: r[k] for k in ("loss", "lr", "grad_norm")} for r in records if "loss" in r}
    assert steps == expected["steps"]
    assert [r["eval_loss"] for r in records if "eval_loss" in r][-1] == expected["eval_loss"]
    step_dir = tmp_path / "fx" / "checkpoints" / "4"
    with open(step_dir / "data_iter" / "metadata", encoding="utf-8") as f:
        assert json.load(f) == expected["data_iter"]
    assert state_digest(str(step_dir / "state")) == expected["state_sha256"]
