"""Ahead-of-time compile: targets, refusals, the memory report, the fit check, and a saved step that trains.

TPU targets need libtpu and GPU targets JAX's CUDA plugin, which the default install keeps out of the
environment (every process would probe for a TPU or a GPU). These tests run train_compile in a subprocess
with the package's directory on PYTHONPATH: the environment's own when installed, else the directory setup.sh
unpacks it into (LIBTPU_TARGET_DIR, default ~/.cache/maxtext/libtpu-<version>; CUDA_PLUGIN_TARGET_DIR, default
~/.cache/maxtext/jax-cuda12-<jax version>). Without it they fail, naming the fix.
"""

import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from MaxText import paths
from MaxText.config import ConfigError
from MaxText.tests.helpers import BASE_YML, TINY, run_steps
from MaxText.training import aot

LIBTPU_DIR = os.environ.get(
    "LIBTPU_TARGET_DIR", os.path.expanduser(f"~/.cache/maxtext/libtpu-{aot.LIBTPU_PIN.split('==')[1]}")
)


CUDA_PLUGIN_DIR = os.environ.get("CUDA_PLUGIN_TARGET_DIR", aot.CUDA_PLUGIN_DIR)


def _aside_path(available: bool, directory: str, probe: str, what: str) -> str:
    """A PYTHONPATH entry that provides `what` ('' when the environment already has it)."""
    if available:
        return ""
    if not glob.glob(os.path.join(directory, probe)):
        pytest.fail(
            f"{what} not found in the environment or {directory}: run `bash setup.sh`, which unpacks it there"
        )
    return directory


def _libtpu_path() -> str:
    return _aside_path(aot.libtpu_available(), LIBTPU_DIR, os.path.join("libtpu", "libtpu.so"), "libtpu")


def _cuda_plugin_path() -> str:
    return _aside_path(
        aot.cuda_plugin_available(),
        CUDA_PLUGIN_DIR,
        os.path.join("jax_plugins", "xla_cuda12"),
        "JAX's CUDA plugin",
    )


def train_compile(args, aside: str = None, timeout: int = 600, env_extra=None):
    """Runs MaxText.train_compile in a subprocess; `aside` is a directory to put on its PYTHONPATH."""
    env = dict(os.environ, **(env_extra or {}))
    env.pop("XLA_FLAGS", None)  # no fake CPU devices: the target's devices come from its description
    path = [paths.REPO_ROOT] + ([aside] if aside else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    return subprocess.run(
        [sys.executable, "-m", "MaxText.train_compile", BASE_YML, *args],
        env=env,
        cwd=paths.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_target_names():
    targets = aot.known_targets()
    for name, topology, devices in [
        ("v4-8", "v4:2x2x1", 4),
        ("v4-128", "v4:4x4x4", 64),
        ("v5p-8", "v5:2x2x1", 4),
        ("v5e-1", "v5e:1x1", 1),
        ("v5e-16", "v5e:4x4", 16),
        ("v5e-256", "v5e:16x16", 256),
        ("v6e-8", "v6e:2x4", 8),
    ]:
        assert (targets[name].topology, targets[name].devices_per_slice) == (topology, devices), name
    assert targets["v5e-16"].hbm_bytes == 16 * aot.GIB and targets["v5p-8"].hbm_bytes == 95 * aot.GIB
    big = {"total": 17 * aot.GIB}
    with pytest.raises(
        ConfigError, match=r"v5e-16: .* fit a v5e device's 16 GiB HBM \(needs 17.00 GiB per device\)"
    ):
        aot.check_fits(big, targets["v5e-16"])
    aot.check_fits(big, targets["v6e-16"])  # 32 GiB
    aot.check_fits(big, aot.resolve_target("local"))  # unknown capacity: no check
    for name, topology, devices in [("h100-1", "1x1x1", 1), ("a100-4", "1x1x4", 4), ("h200-8", "1x1x8", 8),
                                    ("b200-32", "1x4x8", 32)]:  # fmt: skip
        target = aot.resolve_target(name)
        assert (target.platform, target.topology, target.devices_per_slice) == (
            "gpu",
            topology,
            devices,
        ), name
    h100 = aot.resolve_target("h100-8")
    assert h100.hbm_bytes == 81559 << 20 and h100.usable_fraction == 0.75  # JAX preallocates 75% by default
    assert "core_count: 132" in h100.target_config and "major: 9 minor: 0" in h100.target_config
    with pytest.raises(
        ConfigError, match=r"h100-8: .* fit a h100 device's 59.7 GiB usable \(XLA_PYTHON_CLIENT"
    ):
        aot.check_fits({"total": 60 * aot.GIB}, h100)
    for name in ("h100-80gb", "h100-12", "a3-8"):
        with pytest.raises(ConfigError, match=rf"compile_topology='{name}': no description .*h100-N"):
            aot.resolve_target(name)
    with pytest.raises(
        ConfigError, match=r"compile_topology='v9-8': unknown target; expected local, .*h100-N.*v5e-256"
    ):
        aot.resolve_target("v9-8")


def test_libtpu_pin_matches_requirements_tpu():
    with open(os.path.join(paths.REPO_ROOT, "requirements-tpu.txt"), encoding="utf-8") as f:
        pins = [line.strip() for line in f if line.startswith("libtpu==")]
    assert pins == [aot.LIBTPU_PIN]


def test_refusals_exit_2():
    """Unknown and GPU names, and TPU targets without libtpu, exit 2 with one line naming the key."""
    out = train_compile(["compile_topology=a3-8"])
    assert (
        out.returncode == 2 and "compile_topology='a3-8': no description of this GPU" in out.stderr
    ), out.stderr
    out = train_compile(["compile_topology=h100-8", "compile_topology_num_slices=2"])
    assert out.returncode == 2 and "set dcn_*_parallelism to the number of hosts" in out.stderr, out.stderr
    if not aot.cuda_plugin_available():
        out = train_compile(["compile_topology=h100-8"])
        assert out.returncode == 2 and "GPU targets need JAX's CUDA plugin" in out.stderr, out.stderr
    if not aot.libtpu_available():
        out = train_compile(["compile_topology=v5e-16"])
        assert out.returncode == 2, out.stderr
        assert "TPU targets need libtpu" in out.stderr and "DEVICE=tpu bash setup.sh" in out.stderr


@pytest.mark.slow
def test_llama2_7b_on_v4_8_reports_memory_and_flops():
    """The real train step of llama2-7b compiled for a v4-8 slice: memory per device and FLOPs."""
    out = train_compile(
        [
            "compile_topology=v4-8",
            "model_name=llama2-7b",
            "per_device_batch_size=1",
            "max_target_length=128",
            "dtype=bfloat16",
            "weight_dtype=bfloat16",
        ],
        _libtpu_path(),
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    text = out.stdout
    assert "compiled the train step for v4-8 x 1 slice(s): 4 devices (TPU v4)" in text, text
    # 6.74e9 bf16 parameters over 4 fsdp shards; Adam's two moments in bf16 twice that.
    params = float(re.search(r"parameters\s+([\d.]+) GiB", text).group(1))
    assert abs(params - 6.738e9 * 2 / 4 / aot.GIB) < 0.01, text
    optimizer = float(re.search(r"optimizer state\s+([\d.]+) GiB", text).group(1))
    assert abs(optimizer - 2 * params) < 0.01, text
    total = re.search(r"total\s+([\d.]+) GiB of 32 GiB HBM", text)
    assert total and float(total.group(1)) > params + optimizer, text
    assert float(re.search(r"FLOPs per device per step: ([\d.e+]+) \(XLA", text).group(1)) > 0


@pytest.mark.slow
def test_job_that_does_not_fit_exits_2():
    """llama2-7b in float32 without remat at 512 tokens a row overflows a v5e chip's 16 GiB."""
    out = train_compile(
        [
            "compile_topology=v5e-4",
            "model_name=llama2-7b",
            "per_device_batch_size=1",
            "max_target_length=512",
        ],
        _libtpu_path(),
    )
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]
    assert (
        "config error: compile_topology=v5e-4: the train step does not fit a v5e device's 16 GiB HBM (XLA: "
        in out.stderr
    ), out.stderr[-3000:]


@pytest.mark.slow
def test_saved_local_step_trains_like_a_normal_run(tmp_path):
    """compile_topology=local + compiled_trainstep_file: train loads the executable and gets the same loss.

    train_compile runs in a subprocess (one CPU device) because it must compile without the persistent
    compilation cache, which this test process already uses."""
    path = str(tmp_path / "step.pkl")
    out = train_compile(
        [*TINY, "per_device_batch_size=8", "compile_topology=local", f"compiled_trainstep_file={path}"]
    )
    assert out.returncode == 0 and "saved the compiled train step" in out.stdout, (
        out.stdout + out.stderr[-3000:]
    )
    ref, _ = run_steps(["per_device_batch_size=8"], num_devices=1)
    got, _ = run_steps(["per_device_batch_size=8", f"compiled_trainstep_file={path}"], num_devices=1)
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(ConfigError, match=r"compiled with different settings \(learning_rate="):
        run_steps(
            ["per_device_batch_size=8", "learning_rate=0.5", f"compiled_trainstep_file={path}"], num_devices=1
        )
    with pytest.raises(ConfigError, match=r"compiled for .*'num_devices': 1.*'num_devices': 8"):
        run_steps(["per_device_batch_size=1", f"compiled_trainstep_file={path}"], num_devices=8)


@pytest.mark.slow
def test_llama2_7b_on_h100_8_reports_memory():
    """The real train step of llama2-7b compiled for 8 H100s by XLA's GPU compiler (about 15 s)."""
    out = train_compile(
        ["compile_topology=h100-8", "model_name=llama2-7b", "per_device_batch_size=1", "max_target_length=2048",
         "dtype=bfloat16", "remat_policy=full"],
        _cuda_plugin_path(),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    text = out.stdout
    assert "compiled the train step for h100-8 x 1 slice(s): 8 devices (NVIDIA H100 80GB HBM3)" in text, text
    params = float(re.search(r"parameters\s+([\d.]+) GiB", text).group(1))
    assert abs(params - 6.738e9 * 4 / 8 / aot.GIB) < 0.01, text  # float32 weights over 8 fsdp shards
    total = float(re.search(r"total\s+([\d.]+) GiB of 59.7 GiB usable", text).group(1))
    temp = float(re.search(r"temp \(activations\)\s+([\d.]+) GiB", text).group(1))
    assert temp > 1 and total > 3 * params + temp - 0.01, text  # params + Adam's two moments + activations


@pytest.mark.slow
def test_gpu_fit_follows_the_memory_fraction_and_a_saved_gpu_step_is_refused_here(tmp_path):
    """A tiny model at 4 x 8192 tokens needs ~30 GiB: it fits an H100's default 75% share, not 25% of it. Its
    saved executable names the H100s, so train on this CPU machine refuses it."""
    args = ["compile_topology=h100-8", *TINY, "per_device_batch_size=4", "max_target_length=8192"]
    path = str(tmp_path / "h100.pkl")
    out = train_compile([*args, f"compiled_trainstep_file={path}"], _cuda_plugin_path())
    assert out.returncode == 0 and "saved the compiled train step" in out.stdout, (
        out.stdout + out.stderr[-3000:]
    )
    out = train_compile(args, _cuda_plugin_path(), env_extra={"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.25"})
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]
    assert "does not fit a h100 device's 19.9 GiB usable (XLA_PYTHON_CLIENT_MEM_FRACTION=0.25" in out.stderr
    with pytest.raises(ConfigError, match=r"compiled for .*'platform': 'gpu', 'device_kind': 'NVIDIA H100"):
        run_steps(["per_device_batch_size=4", "max_target_length=8192", f"compiled_trainstep_file={path}"], 8)


@pytest.mark.parametrize(
    "topology, aside, kernel, call",
    [("h100-8", _cuda_plugin_path, "flash_pallas", "__gpu$xla.gpu.triton"), ("v4-8", _libtpu_path, "splash", "tpu_custom_call")],
)  # fmt: skip
def test_aot_step_compiles_the_target_kernels(topology, aside, kernel, call):
    """The kernel plan follows the target, not this CPU host: the GPU step holds Triton flash attention and the
    TPU step Mosaic splash attention (run per shard under shard_map), counted in the compiled HLO."""
    out = train_compile(
        [f"compile_topology={topology}", *TINY, "attention=autoselected", "per_device_batch_size=1",
         "max_target_length=256"],
        aside(),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    line = re.search(r"kernels for (\w+): attention (\w+), dot (\w+), (\d+) Pallas kernel", out.stdout)
    assert line, out.stdout
    assert line.groups()[:3] == ("gpu" if topology.startswith("h100") else "tpu", kernel, "xla"), out.stdout
    assert int(line.group(4)) >= 2, (call, out.stdout)  # the forward and the backward kernels
