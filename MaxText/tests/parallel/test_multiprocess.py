"""Multi-process training with jax.distributed: 2 local processes x 2 fake CPU devices each.

The processes form a hybrid mesh (dcn_data_parallelism=2 across them, ici_fsdp_parallelism=2 within each).
One pair of `python3 -m MaxText.train` processes trains until process 1 alone gets SIGTERM; both must agree on
the step, save it together and exit 0, with only process 0 writing metrics. Their losses must equal an
in-process run on 4 devices (fsdp 4), and the checkpoint they wrote must resume in this single process on that
mesh (another topology: the parameters reshard; the data position of the two processes' lanes is merged)
and continue with the same losses. All runs share one
learning-rate schedule length, so runs of different lengths follow the same schedule.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from MaxText import paths
from MaxText.config import ConfigError, load_config
from MaxText.parallel import distributed
from MaxText.tests.helpers import BASE_YML, TINY
from MaxText.training import trainer

RUN = [
    *TINY,
    # Built-in corpus: each process reads only its rows' lanes, and the batches must not depend on the
    # process count (2 processes == 1), also after resuming the 2-process data position in one process.
    "dataset_type=builtin",
    "vocab_size=4096",
    "enable_checkpointing=true",
    "learning_rate_schedule_steps=10",
    "checkpoint_period=1000",
    "async_checkpointing=false",
]
TIMEOUT_S = 300  # every subprocess wait is bounded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(port: int, process_id: int, num_processes: int = 2) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(num_processes),
        JAX_PROCESS_ID=str(process_id),
    )
    return env


def launch(base, process_id, port, *overrides, num_processes=2):
    args = [
        sys.executable,
        "-m",
        "MaxText.train",
        BASE_YML,
        *RUN,
        f"base_output_directory={base}",
        *overrides,
    ]
    log = open(os.path.join(base, f"p{process_id}.log"), "wb")  # pylint: disable=consider-using-with
    return subprocess.Popen(
        args,
        cwd=paths.REPO_ROOT,
        env=child_env(port, process_id, num_processes),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def step_losses(run_dir) -> dict:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.endswith("\n")]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def read_log(base, process_id) -> str:
    with open(os.path.join(base, f"p{process_id}.log"), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module", name="stopped_pair")
def fixture_stopped_pair(tmp_path_factory):
    """Runs the 2-process job until process 1 gets SIGTERM after step 4; returns (base dir, stopped step)."""
    base = str(tmp_path_factory.mktemp("mp"))
    port = free_port()
    # dcn data 2 x ici fsdp 2: a hybrid mesh with each process as a slice.
    run = [
        "run_name=mp",
        "per_device_batch_size=1",
        "steps=200",
        "dcn_data_parallelism=2",
        "ici_fsdp_parallelism=2",
    ]
    procs = [launch(base, i, port, *run) for i in range(2)]
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(step_losses(os.path.join(base, "mp"))) < 4:
            assert all(p.poll() is None for p in procs), read_log(base, 0) + read_log(base, 1)
            assert time.monotonic() < deadline, "timed out waiting for step 4"
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], read_log(base, 0) + read_log(base, 1)
    stopped = max(step_losses(os.path.join(base, "mp")))
    return base, stopped


@pytest.mark.slow
def test_two_processes_stop_together_and_only_process_0_writes_metrics(stopped_pair):
    base, stopped = stopped_pair
    assert 4 <= stopped < 200
    out0, out1 = read_log(base, 0), read_log(base, 1)
    assert "joined 2 processes via JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID" in out0
    assert "mesh {'data': 2, 'stage': 1, 'fsdp': 2," in out0
    assert f"received a stop request from another process at step {stopped}: saving" in out0
    assert "step 1/200" not in out1 and "received" not in out1  # process 1 logs nothing of its own
    with open(os.path.join(base, "mp", "metrics.jsonl"), encoding="utf-8") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == list(range(1, stopped + 1))  # one writer: no step twice
    assert sorted(os.listdir(os.path.join(base, "mp", "checkpoints"))) == [str(stopped)]


@pytest.mark.slow
def test_two_processes_equal_one_and_their_checkpoint_resumes_on_another_topology(stopped_pair):
    base, stopped = stopped_pair
    two_process = step_losses(os.path.join(base, "mp"))
    steps = stopped + 2
    ref_cfg = load_config(
        [BASE_YML, *RUN, "per_device_batch_size=1", f"steps={steps}", f"base_output_directory={base}", "run_name=ref"]
    )  # fmt: skip
    assert trainer.train(ref_cfg, jax.devices()[:4]) == 0  # 1 process x 4 devices, same global batch
    ref = step_losses(os.path.join(base, "ref"))
    np.testing.assert_allclose(
        [two_process[i] for i in range(1, stopped + 1)], [ref[i] for i in range(1, stopped + 1)], rtol=1e-5
    )
    # Resume the 2-process checkpoint (data 2 x fsdp 2 over two processes) in this process on fsdp 4: the
    # parameters reshard on restore; the train step is the reference's (compiled once).
    resume_cfg = load_config(
        [BASE_YML, *RUN, "per_device_batch_size=1", f"steps={steps}", f"base_output_directory={base}", "run_name=mp"]
    )  # fmt: skip
    assert trainer.train(resume_cfg, jax.devices()[:4]) == 0
    resumed = step_losses(os.path.join(base, "mp"))
    np.testing.assert_allclose(
        [resumed[stopped + 1], resumed[steps]], [ref[stopped + 1], ref[steps]], rtol=1e-5
    )


@pytest.mark.slow
def test_missing_peer_exits_with_a_clear_error_within_the_timeout(tmp_path):
    proc = launch(str(tmp_path), 0, free_port(), "jax_distributed_initialization_timeout=3")
    start = time.monotonic()
    code = proc.wait(timeout=TIMEOUT_S)
    out = read_log(str(tmp_path), 0)
    assert code == distributed.EXIT_DISTRIBUTED, out
    assert "error: process 0 of 2 could not join the cluster at 127.0.0.1:" in out
    assert "jax_distributed_initialization_timeout=3s: a peer process did not start" in out
    assert time.monotonic() - start < 120  # startup on a busy machine + 3 s, never jax's abort or a hang


def test_cluster_from_env():
    assert distributed.cluster_from_env({}) is None
    one = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
    assert distributed.cluster_from_env(one) is None
    c = distributed.cluster_from_env({**one, "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"})
    assert (c.coordinator, c.num_processes, c.process_id) == ("h:1", 4, 3)
    # XPK GPU workloads: address and port apart, NNODES / NODE_RANK.
    xpk = {
        "JAX_COORDINATOR_ADDRESS": "js-0-0.js",
        "JAX_COORDINATOR_PORT": "6002",
        "NNODES": "2",
        "NODE_RANK": "1",
    }
    c = distributed.cluster_from_env(xpk)
    assert (c.coordinator, c.num_processes, c.process_id) == ("js-0-0.js:6002", 2, 1)
    # A JobSet's Indexed Job: the process id is the completion index; the default port.
    jobset = {"JAX_COORDINATOR_ADDRESS": "js-w-0-0.js", "JAX_NUM_PROCESSES": "2", "JOB_COMPLETION_INDEX": "0"}
    assert distributed.cluster_from_env(jobset).coordinator == f"js-w-0-0.js:{distributed.DEFAULT_PORT}"
    tpu = distributed.cluster_from_env({"TPU_WORKER_HOSTNAMES": "a,b"})
    assert tpu.coordinator is None and tpu.source == "TPU_WORKER_HOSTNAMES"
    assert distributed.cluster_from_env({"TPU_WORKER_HOSTNAMES": "a"}) is None
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID not set"):
        distributed.cluster_from_env({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    with pytest.raises(
        ConfigError, match="JAX_PROCESS_ID=2: expected a process id below JAX_NUM_PROCESSES=2"
    ):
        distributed.cluster_from_env({**one, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='two': expected an integer >= 1"):
        distributed.cluster_from_env({**one, "JAX_NUM_PROCESSES": "two"})
