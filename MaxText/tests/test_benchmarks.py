"""benchmarks/train_throughput.py runs end to end on a tiny config and writes the documented JSON record."""

import json
import os
import sys

import pytest

from MaxText import paths
from MaxText.tests.helpers import run_benchmark

SCRIPT = os.path.join(paths.REPO_ROOT, "benchmarks", "train_throughput.py")


@pytest.mark.slow
def test_train_throughput_writes_json(tmp_path):
    out = tmp_path / "result.json"
    cmd = [
        sys.executable, SCRIPT, "configs/base.yml", "model_name=test-tiny", "max_target_length=32",
        "dataset_type=synthetic", "peak_tflops_per_device=0.5", "--steps", "2", "--warmup", "1",
        "--out", str(out),
    ]  # fmt: skip
    proc = run_benchmark(cmd, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens/s" in proc.stdout and "MFU" in proc.stdout
    r = json.loads(out.read_text())
    assert r["num_devices"] == 1
    assert r["overrides"]["model_name"] == "test-tiny"
    assert r["steps"] == 2 and len(r["step_times_s"]) == 2 and len(r["step_cpu_times_s"]) == 2
    assert r["tokens_per_step"] == r["global_batch"] * 32
    assert abs(r["tokens_per_s"] - r["tokens_per_step"] / r["median_step_s"]) < 1e-6 * r["tokens_per_s"]
    tflops = r["analytic_flops_per_step"] / r["median_step_s"] / r["num_devices"] / 1e12
    assert abs(r["tflops_per_device"] - tflops) < 1e-9 + 1e-6 * tflops
    assert r["peak_tflops_per_device"] == 0.5 and r["peak_source"] == "peak_tflops_per_device"
    assert abs(r["mfu"] - tflops / 0.5) < 1e-9 + 1e-6 * r["mfu"]
    for key in ("device_kind", "jax_version", "xla_flags", "flops_formula", "timestamp", "final_loss"):
        assert r[key] not in (None, ""), key
    assert r["xla_cost_analysis_flops_per_step"] is None or r["xla_cost_analysis_flops_per_step"] > 0


def test_train_throughput_rejects_unknown_key(tmp_path):
    cmd = [sys.executable, SCRIPT, "no_such_key=1", "--out", str(tmp_path / "x.json")]
    proc = run_benchmark(cmd, timeout=60)
    assert proc.returncode == 2
    assert "no_such_key" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_moe_throughput_writes_json(tmp_path):
    out = tmp_path / "moe.json"
    script = os.path.join(paths.REPO_ROOT, "benchmarks", "moe_throughput.py")
    cmd = [sys.executable, script, "--tokens", "64", "--dim", "16", "--expert-dim", "32", "--experts", "4",
           "--repeats", "1", "--out", str(out)]  # fmt: skip
    proc = run_benchmark(cmd, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["results"]) == {"dropless", "capacity", "dense_loop"}
    assert all(v["tokens_per_s"] > 0 for v in r["results"].values())


@pytest.mark.slow  # two tiny-model compiles in a fresh process with 8 fake devices
def test_strategy_throughput_fast_mode_writes_relative_figures(tmp_path):
    out = tmp_path / "strategies.json"
    script = os.path.join(paths.REPO_ROOT, "benchmarks", "strategy_throughput.py")
    cmd = [sys.executable, script, "--fast", "--strategies", "data", "peak_tflops_per_device=1",
           "--out", str(out)]  # fmt: skip
    proc = run_benchmark(cmd, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert list(r["rows"]) == ["single", "data"]  # the baseline is measured with the row it anchors
    single, data = r["rows"]["single"], r["rows"]["data"]
    assert single["devices"] == 1 and single["relative_step_time"] == 1.0
    assert data["devices"] == 8 and data["mesh"] == {"data": 8}
    assert data["analytic_flops_per_step"] == single["analytic_flops_per_step"]  # same model, same batch
    assert abs(data["relative_step_time"] - data["median_step_s"] / single["median_step_s"]) < 1e-12
    # Against the whole host's peak (8 devices x the configured 1 TFLOP/s) whatever the row uses.
    assert abs(data["host_mfu"] - data["mfu"]) < 1e-12 and abs(single["host_mfu"] - single["mfu"] / 8) < 1e-12
    assert "| data | data 8 |" in proc.stdout


@pytest.mark.slow
def test_optimizer_compare_writes_json_and_plot(tmp_path):
    out = tmp_path / "optimizers.json"
    script = os.path.join(paths.REPO_ROOT, "benchmarks", "optimizer_compare.py")
    cmd = [
        sys.executable,
        script,
        "--quick",
        "--optimizers",
        "muon,sgd",
        "--lr",
        "sgd=0.1",
        "--steps",
        "6",
        "--out",
        str(out),
    ]
    proc = run_benchmark(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [x["optimizer"] for x in r["results"]] == ["muon", "sgd"]
    muon, sgd = r["results"]
    assert (
        sgd["opt_state_bytes"] == 4 < muon["opt_state_bytes"]
    )  # sgd without momentum: the schedule count only
    assert all(
        x["final_step"] == 6 and x["eval_bits_per_byte"] > 0 and len(x["loss_curve"]) == 6
        for x in r["results"]
    )
    assert os.path.isfile(out.with_suffix(".png")) and "| muon |" in proc.stdout
