"""Checkpointing invariants: bitwise round trip and resume, kills at any moment, signals, NaN, profiling.

In-process runs use the 8 fake devices (global batch 8); the SIGKILL test runs `python3 -m MaxText.train` in
a subprocess on 1 device with the same global batch. All runs share one learning-rate schedule length
(`learning_rate_schedule_steps`), so runs of different lengths compile the same train step (the persistent
compile cache serves the repeats) and a run extended from 3 to 6 steps follows the schedule of an
uninterrupted 6-step run.
"""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from MaxText import input_pipeline, paths
from MaxText.config import ConfigError
from MaxText.parallel import mesh as mesh_lib
from MaxText.tests.helpers import CHECKPOINT_RUN, in_process_cfg, step_records, steps_on_disk
from MaxText.checkpoint import checkpointing
from MaxText.training import trainer
from MaxText.training.train_state import init_state

SUBPROCESS = ["configs/base.yml", *CHECKPOINT_RUN, "per_device_batch_size=8"]  # 1 device


def restore(cfg, run_dir, step):
    """(state as numpy, data iterator state, meta) of checkpoint `step` of `run_dir`, on cfg's mesh."""
    s = trainer.build(cfg)
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(run_dir), 0, False)
    try:
        target = checkpointing.abstract_with_shardings(s.abstract_state, s.shardings)
        state, data_state, meta = ckpt.restore(step, target)
    finally:
        ckpt.close()
    return jax.device_get(state), data_state, meta


def read_item(step_dir, item):
    """A JSON item (data_iter, meta) of a step directory, read without building a mesh."""
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(step_dir, item))


def assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(np.asarray(x), np.asarray(y)), "leaves differ"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run a: 6 steps uninterrupted. Run b: 3 steps, then re-invoked with steps=6. Both save every step and
    keep every checkpoint. Returns the base output directory."""
    base = tmp_path_factory.mktemp("runs")
    assert trainer.train(in_process_cfg(base, "a", "steps=6", "max_num_checkpoints_to_keep=0")) == 0
    assert trainer.train(in_process_cfg(base, "b", "steps=3", "max_num_checkpoints_to_keep=0")) == 0
    assert trainer.train(in_process_cfg(base, "b", "steps=6", "max_num_checkpoints_to_keep=0")) == 0
    return base


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_checkpoint_round_trip_is_bitwise(tmp_path, async_save):
    s = trainer.build(in_process_cfg(tmp_path, "rt"))  # the fixture's model: its init compiles once
    rng = np.random.default_rng(0)
    with mesh_lib.activate(s.mesh, s.rules):
        host = jax.device_get(init_state(s.model, s.tx, 0, s.shardings))
        # Non-trivial optimizer moments and step, so a restore that fell back to init would show.
        opt_state = jax.tree.map(
            lambda x: rng.standard_normal(x.shape).astype(x.dtype) if x.dtype.kind == "f" else x + 5,
            host.opt_state,
        )
        host = host.replace(step=np.int32(7), opt_state=opt_state)
        expected = jax.tree.map(np.array, host)  # copies, independent of the device buffers
        state = jax.device_put(host, s.shardings)
        ckpt = checkpointing.Checkpointer(str(tmp_path / "ckpt"), 2, async_save)
        ckpt.save(7, state, {"epoch": 1, "row": 5}, {"tokenizer": None})
        # As in training, the next step donates the state while an async save may still be reading it (on
        # CPU, JAX then leaves the buffers orbax still holds undonated; the checkpoint must not see the zeros).
        jax.jit(lambda t: jax.tree.map(lambda x: x * 0, t), donate_argnums=0)(state)
        ckpt.wait()
        assert ckpt.latest_step() == 7
        target = checkpointing.abstract_with_shardings(s.abstract_state, s.shardings)
        restored, data_state, meta = ckpt.restore(7, target)
        ckpt.close()
    assert int(restored.step) == 7
    assert_trees_equal(jax.device_get(restored), expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(s.shardings)):
        assert got.sharding == want
    assert data_state == {"epoch": 1, "row": 5}
    assert meta["format_version"] == checkpointing.FORMAT_VERSION and meta["step"] == 7


def test_checkpoint_holds_format_version_config_and_tokenizer(runs):
    meta = checkpointing.read_meta(str(runs / "a"))  # a run directory resolves to its newest step
    assert meta["format_version"] == checkpointing.FORMAT_VERSION and meta["step"] == 6
    cfg = in_process_cfg(runs, "a", "steps=6", "max_num_checkpoints_to_keep=0")
    assert meta["config"] == json.loads(json.dumps(checkpointing.config_dict(cfg)))
    assert meta["config"]["base_emb_dim"] == 32  # resolved: the model YAML's value, not base.yml's
    assert meta["tokenizer"] == input_pipeline.load_tokenizer(cfg.tokenizer_path).identity()


def test_resumed_run_is_bitwise_equal_to_uninterrupted(runs):
    a, b = step_records(runs / "a"), step_records(runs / "b")
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5, 6] and [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in b] == [r["loss"] for r in a]  # float equality of the logged float32 values
    assert [r["grad_norm"] for r in b] == [r["grad_norm"] for r in a]
    assert len({r["loss"] for r in a}) == 6  # each step saw different data
    assert steps_on_disk(runs / "a") == steps_on_disk(runs / "b") == ([1, 2, 3, 4, 5, 6], [])
    cfg = in_process_cfg(runs, "a")
    # a's step 3 was saved in the background while step 4 ran on the donated state; b's at the end of its run.
    for step in (3, 6):
        state_a, data_a, _ = restore(cfg, runs / "a", step)
        state_b, data_b, _ = restore(cfg, runs / "b", step)
        assert int(state_a.step) == int(state_b.step) == step
        assert_trees_equal(state_b, state_a)  # params and optimizer state, bitwise
        assert data_b == data_a  # same position in the data stream
    assert [lane[:2] for lane in data_a["lanes"]] == [[0, 6]] * 8  # 6 rows of each of the 8 lanes consumed


def test_load_parameters_path_gives_params_with_a_fresh_optimizer(runs):
    step_dir = str(runs / "a" / "checkpoints" / "6")
    for path in (runs / "a", runs / "a" / "checkpoints", step_dir):  # run, checkpoints or step directory
        assert checkpointing.resolve_step_dir(str(path)) == step_dir
    source, _, _ = restore(in_process_cfg(runs, "a"), runs / "a", 6)
    cfg = in_process_cfg(runs, "fresh", f"load_parameters_path={runs / 'a'}")
    s = trainer.build(cfg)
    data_iter = input_pipeline.make_train_iterator(trainer.data_config(cfg, s.global_batch))
    with mesh_lib.activate(s.mesh, s.rules):
        state = jax.device_get(trainer._restore_or_init(s, None, data_iter, None))
    assert int(state.step) == 0
    assert_trees_equal(state.params, source.params)
    # A fresh AdamW state is all zeros (step counts and moments); the source's is not.
    assert all(not np.any(x) for x in jax.tree.leaves(state.opt_state))
    assert any(np.any(x) for x in jax.tree.leaves(source.opt_state))
    assert all(lane[:2] == [0, 0] for lane in data_iter.get_state()["lanes"])


def _train_other_tokenizer(prefix) -> str:
    import sentencepiece as spm

    with gzip.open(input_pipeline.BUILTIN_CORPUS_PATH, "rt", encoding="utf-8") as f:
        lines = [line for line in f.read(200_000).splitlines() if line.strip()]
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=400, model_type="bpe",
        byte_fallback=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3, minloglevel=2,
    )  # fmt: skip
    return f"{prefix}.model"


def test_resume_with_another_tokenizer_or_data_stream_is_a_config_error(runs, tmp_path):
    shutil.copytree(runs / "a", tmp_path / "a")
    other = _train_other_tokenizer(tmp_path / "other")
    with pytest.raises(ConfigError, match="tokenizer_path=.*differs from the tokenizer this run was trained"):
        trainer.train(in_process_cfg(tmp_path, "a", "steps=7", f"tokenizer_path={other}"))
    with pytest.raises(
        ConfigError, match="cannot resume from step 6: data iterator state .*data_shuffle_seed"
    ):
        trainer.train(in_process_cfg(tmp_path, "a", "steps=7", "data_shuffle_seed=1"))
    assert steps_on_disk(tmp_path / "a")[0][-1] == 6


def _resume_with_learning_rate(runs, tmp_path, capsys, learning_rate, *overrides):
    """Resumes a copy of run a (6 good checkpoints) for 2 more steps at `learning_rate`: (exit code, stdout)."""
    shutil.copytree(runs / "a", tmp_path / "a")
    capsys.readouterr()
    lr = [f"learning_rate={learning_rate}", "learning_rate_schedule_steps=100"]
    code = trainer.train(in_process_cfg(tmp_path, "a", "steps=8", *lr, *overrides))
    return code, capsys.readouterr().out


@pytest.mark.slow
def test_non_finite_loss_exits_3_and_keeps_the_last_good_checkpoint(runs, tmp_path, capsys):
    # Step 7 moves every parameter by ~1e30 (finite, saved); step 8's loss or gradient overflows. The profile
    # window [7, 8] is cut short by the error: the trace is still written.
    profile = ["profiler=xplane", "skip_first_n_steps_for_profiler=6", "profiler_steps=2"]
    code, out = _resume_with_learning_rate(runs, tmp_path, capsys, 1e30, *profile)
    assert code == trainer.EXIT_NON_FINITE == 3
    assert "error: non-finite loss or gradient norm at step 8" in out
    assert f"the last good checkpoint is step 7 in {tmp_path / 'a' / 'checkpoints'}" in out
    assert steps_on_disk(tmp_path / "a") == ([5, 6, 7], [])  # nothing written for step 8
    state, _, _ = restore(in_process_cfg(tmp_path, "a"), tmp_path / "a", 7)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
    assert list((tmp_path / "a" / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_non_finite_state_is_never_saved(runs, tmp_path, capsys):
    # 1e39 is inf in float32: step 7's loss and gradient are finite but its update makes the state NaN.
    code, out = _resume_with_learning_rate(runs, tmp_path, capsys, 1e39)
    assert code == 3
    assert "error: non-finite parameters or optimizer state after step 7" in out
    assert "the last good checkpoint is step 6" in out
    assert steps_on_disk(tmp_path / "a") == ([1, 2, 3, 4, 5, 6], [])


def test_xplane_profile_is_written_to_tensorboard_dir(tmp_path):
    cfg = in_process_cfg(
        tmp_path, "p", "steps=3", "enable_checkpointing=false", "profiler=xplane",
        "skip_first_n_steps_for_profiler=1", "profiler_steps=1",
    )  # fmt: skip
    assert trainer.train(cfg) == 0
    profile_dir = tmp_path / "p" / "tensorboard" / "plugins" / "profile"
    traces = list(profile_dir.glob("*/*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


def test_stop_flag_turns_the_first_signal_into_a_request():
    before = signal.getsignal(signal.SIGINT)
    flag = trainer._StopFlag()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs in the main thread at the next bytecode boundary
        assert flag.requested == "SIGINT"
        assert signal.getsignal(signal.SIGINT) is before  # a second SIGINT acts as usual
    finally:
        flag.restore()


def _subprocess_env():
    # One CPU device keeps the child light; the persistent compile cache comes from conftest's environment.
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")


def start_training(base, run_name, steps, *overrides):
    args = [sys.executable, "-m", "MaxText.train", *SUBPROCESS, f"base_output_directory={base}"]
    args += [f"run_name={run_name}", f"steps={steps}", *overrides]
    log = open(os.path.join(base, f"{run_name}.log"), "ab")  # pylint: disable=consider-using-with
    return subprocess.Popen(
        args, cwd=paths.REPO_ROOT, env=_subprocess_env(), stdout=log, stderr=subprocess.STDOUT
    )


def run_training(base, run_name, steps, *overrides, timeout=300) -> str:
    """Runs to completion; returns this invocation's output. Fails on a non-zero exit."""
    log_path = os.path.join(base, f"{run_name}.log")
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    proc = start_training(base, run_name, steps, *overrides)
    code = proc.wait(timeout=timeout)
    with open(log_path, encoding="utf-8") as f:
        out = f.read()[offset:]
    assert code == 0, out
    return out


def wait_for(proc, condition, what, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"training exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def test_sigterm_saves_the_current_step_exits_0_and_resume_continues(runs, tmp_path, capsys):
    """In-process: the signal comes from a watcher thread once step 2 is logged; the loop saves and returns 0."""
    run_dir = tmp_path / "t"

    def signal_at_step_2():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (run_dir / "metrics.jsonl").exists() and len(step_records(run_dir)) >= 2:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.005)

    late = []  # a signal arriving after train() restored the handlers lands here, not in pytest
    previous = signal.signal(signal.SIGTERM, lambda signum, _: late.append(signum))
    watcher = threading.Thread(target=signal_at_step_2, daemon=True)
    try:
        watcher.start()
        code = trainer.train(in_process_cfg(tmp_path, "t", "steps=1000", "checkpoint_period=1000"))
        watcher.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = capsys.readouterr().out
    assert code == 0 and not late
    stopped = step_records(run_dir)[-1]["step"]
    assert f"received SIGTERM at step {stopped}: saving a checkpoint and exiting" in out
    assert steps_on_disk(run_dir) == ([stopped], [])  # checkpoint_period=1000: only the signal's save
    assert read_item(run_dir / "checkpoints" / str(stopped), "meta")["step"] == stopped

    assert trainer.train(in_process_cfg(tmp_path, "t", f"steps={stopped + 2}")) == 0
    assert f"resumed run 't' from step {stopped} " in capsys.readouterr().out
    records = step_records(run_dir)
    assert [r["step"] for r in records] == list(range(1, stopped + 3))
    lanes = read_item(run_dir / "checkpoints" / str(stopped + 2), "data_iter")["lanes"]
    assert [lane[:2] for lane in lanes] == [[0, stopped + 2]] * 8  # one row per lane per step
    # Same config and schedule as run a: the stopped-and-resumed run matches it bitwise where they overlap.
    uninterrupted = {r["step"]: r["loss"] for r in step_records(runs / "a")}
    overlap = [r for r in records if r["step"] in uninterrupted]
    assert [r["loss"] for r in overlap] == [uninterrupted[r["step"]] for r in overlap]


@pytest.mark.slow
def test_sigkill_during_an_async_save_then_resume(tmp_path):
    run_dir = tmp_path / "k"
    ckpt_dir = run_dir / "checkpoints"

    def save_in_flight():
        # A step directory being written (orbax: "<step>.orbax-checkpoint-tmp", renamed when complete) that
        # already holds part of the train state, while an older step is complete.
        names = os.listdir(ckpt_dir) if ckpt_dir.exists() else []
        tmp = [n for n in names if ".orbax-checkpoint-tmp" in n and (ckpt_dir / n / "state").exists()]
        return bool(tmp) and any(n.isdigit() and int(n) >= 2 for n in names)

    for _ in range(3):  # the save can finish between the check and the kill (rare): then kill the resume
        seen = len(step_records(run_dir)) if ckpt_dir.exists() else 0
        proc = start_training(tmp_path, "k", 1000, "max_num_checkpoints_to_keep=2")
        wait_for(proc, save_in_flight, "an async save in flight")
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
        complete, temporary = steps_on_disk(run_dir)
        if temporary:
            break
    assert temporary, "no kill landed inside a save"
    in_flight = int(temporary[0].split(".")[0])
    last_complete = complete[-1]
    killed = {r["step"]: r for r in step_records(run_dir)[seen:]}
    assert max(killed) >= in_flight > last_complete  # steps after the last complete checkpoint were lost

    seen = len(step_records(run_dir))
    out = run_training(tmp_path, "k", in_flight + 1, "max_num_checkpoints_to_keep=2")
    assert f"resumed run 'k' from step {last_complete} " in out
    # orbax removed the interrupted save; max_num_checkpoints_to_keep=2 holds across the resume
    assert steps_on_disk(run_dir) == ([in_flight, in_flight + 1], [])
    redone = step_records(run_dir)[seen:]
    assert [r["step"] for r in redone] == list(range(last_complete + 1, in_flight + 2))
    for r in redone[:-1]:  # the lost steps, recomputed from the last complete checkpoint: bitwise the same
        assert (r["loss"], r["grad_norm"]) == (killed[r["step"]]["loss"], killed[r["step"]]["grad_norm"])
