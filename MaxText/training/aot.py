"""Ahead-of-time compilation targets, the per-device memory report and the saved train-step executable.

A target is `local` (this machine's devices), a Cloud TPU slice named as MaxText names them: v4-8, v5p-128
(TensorCores, two per chip, one JAX device per chip), v5e-16, v6e-256 (chips), or NVIDIA GPUs: a100-N,
h100-N, h200-N, b200-N (N GPUs in HGX hosts of 8; N = 1, 2, 4 or a multiple of 8). Both come from JAX's
topology descriptions (jax.experimental.topologies.get_topology_desc) on a host without the hardware: libtpu
describes TPU slices; JAX's CUDA plugin describes GPUs from an XLA TargetConfig that GPU_MODELS fills in.
Nothing else is guessed: other GPU names and unknown names are refused.

HBM per JAX device (one chip for v4/v5p/v5e/v6e), from Cloud TPU's system architecture pages:
  v4  32 GiB   https://cloud.google.com/tpu/docs/v4
  v5e 16 GiB   https://cloud.google.com/tpu/docs/v5e
  v5p 95 GiB   https://cloud.google.com/tpu/docs/v5p
  v6e 32 GiB   https://cloud.google.com/tpu/docs/v6e
GPU figures (SMs, shared memory, L2, memory, bandwidth, boost clock) are NVIDIA's data sheets and CUDA
programming guide tables for the SXM parts; memory is what nvidia-smi reports as the total. A GPU job can use
XLA_PYTHON_CLIENT_MEM_FRACTION of it (JAX preallocates 0.75 by default), and the fit check uses that share.
"""

import dataclasses
import importlib.util
import math
import os
import pickle

import jax
from jax.experimental import serialize_executable

from MaxText.config import ConfigError

GIB = 1 << 30
LIBTPU_PIN = "libtpu==0.0.42.1"  # what jax[tpu]==0.10.2 requires (libtpu==0.0.42.*)
INSTALL_HINT = (
    f"install it with `DEVICE=tpu bash setup.sh`, or `pip install --no-deps --target DIR {LIBTPU_PIN}` "
    "and put DIR on PYTHONPATH"
)
GPU_PREFIXES = ("a100", "a3", "a4", "h100", "h200", "b200", "gb200", "l4", "gpu")
GPUS_PER_HOST = 8  # HGX / DGX hosts, and GCP's A3/A4 machine types
# JAX's CUDA 12 plugin at the jax version in use: it compiles for NVIDIA GPUs without one.
CUDA_PLUGIN_PINS = (f"jax-cuda12-plugin=={jax.__version__}", f"jax-cuda12-pjrt=={jax.__version__}")
CUDA_PLUGIN_DIR = os.path.expanduser(f"~/.cache/maxtext/jax-cuda12-{jax.__version__}")
CUDA_INSTALL_HINT = (
    f"`bash setup.sh` unpacks it into {CUDA_PLUGIN_DIR}: put that on PYTHONPATH (or `pip install --no-deps "
    f"--target DIR {' '.join(CUDA_PLUGIN_PINS)}` and put DIR there); on a GPU machine `DEVICE=gpu bash setup.sh`"
)


@dataclasses.dataclass(frozen=True)
class Generation:
    """A TPU generation: its topology prefix, chip config, chip grid rank, name unit and HBM per device."""

    topology_prefix: str  # libtpu's name: "v5e" in "v5e:16x16"
    chip_config: str  # megacore: both TensorCores of a chip act as one JAX device
    dims: int  # 2 (v5e, v6e: a 2D torus of chips) or 3 (v4, v5p)
    cores_per_name_unit: int  # "v4-8" counts TensorCores (2 per chip); "v5e-8" counts chips
    hbm_gib: float
    max_chips: int


GENERATIONS = {
    "v4": Generation("v4", "megacore", 3, 2, 32, 4096),
    "v5p": Generation("v5", "megacore", 3, 2, 95, 8192),
    "v5e": Generation("v5e", "default", 2, 1, 16, 256),
    "v6e": Generation("v6e", "default", 2, 1, 32, 256),
}


@dataclasses.dataclass(frozen=True)
class GpuModel:
    """An NVIDIA data-centre GPU as XLA's GPU compiler sees it (the fields of its TargetConfig)."""

    device_kind: str  # what jax.Device.device_kind says on the real part (saved executables compare it)
    compute_capability: tuple
    sms: int
    fp32_lanes_per_sm: int
    shared_memory_per_sm: int  # bytes
    shared_memory_per_block_optin: int  # bytes
    l2_bytes: int
    memory_mib: int
    bandwidth_gb_s: int
    clock_ghz: float

    def target_config(self) -> str:
        """XLA's GpuTargetConfig text proto (CUDA 12.8 runtime and cuDNN 9.8, what the plugin requires)."""
        major, minor = self.compute_capability
        return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {self.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {self.sms}
  fpus_per_core: {self.fp32_lanes_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {self.bandwidth_gb_s * 10**9}
  l2_cache_size: {self.l2_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_mib << 20}
  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{self.device_kind}"
"""


KIB, MIB = 1 << 10, 1 << 20
GPU_MODELS = {
    "a100": GpuModel(
        "NVIDIA A100-SXM4-80GB", (8, 0), 108, 64, 164 * KIB, 163 * KIB, 40 * MIB, 81920, 2039, 1.41
    ),
    "h100": GpuModel(
        "NVIDIA H100 80GB HBM3", (9, 0), 132, 128, 228 * KIB, 227 * KIB, 50 * MIB, 81559, 3350, 1.98
    ),
    "h200": GpuModel("NVIDIA H200", (9, 0), 132, 128, 228 * KIB, 227 * KIB, 50 * MIB, 143771, 4800, 1.98),
    "b200": GpuModel("NVIDIA B200", (10, 0), 148, 128, 228 * KIB, 227 * KIB, 126 * MIB, 183359, 8000, 1.965),
}


@dataclasses.dataclass(frozen=True)
class Target:
    """One compile target. TPU: libtpu's topology name and host bounds; devices = chips per slice. GPU: the
    plugin's topology ("1x<hosts>x<GPUs per host>") and the model's TargetConfig."""

    name: str
    platform: str  # "tpu", "gpu" or "local"
    topology: str = ""
    chip_config: str = ""
    host_bounds: tuple = ()
    devices_per_slice: int = 0
    hbm_bytes: int = 0  # 0: unknown (local targets: no memory check)
    usable_fraction: float = 1.0  # of hbm_bytes a job may use (GPU: JAX's preallocated share)
    target_config: str = ""

    @property
    def usable_bytes(self) -> int:
        return int(self.hbm_bytes * self.usable_fraction)

    def memory_text(self) -> str:
        """The target's memory per device, as the report and the fit check name it."""
        hbm = f"{self.hbm_bytes / GIB:.0f} GiB HBM"
        if self.usable_fraction == 1.0:
            return hbm
        return f"{self.usable_bytes / GIB:.1f} GiB usable (XLA_PYTHON_CLIENT_MEM_FRACTION={self.usable_fraction:g} of {hbm})"


def _chip_grids(dims: int, max_chips: int):
    """Chip grids in MaxText's order: 2x2(x1) first, then double the last of the smallest dimensions."""
    grid = [2, 2] if dims == 2 else [2, 2, 1]
    while math.prod(grid) <= max_chips:
        yield tuple(grid)
        smallest = min(grid)
        last = max(i for i, d in enumerate(grid) if d == smallest)
        grid[last] *= 2


def known_targets() -> dict:
    """Every TPU target name -> Target (v4-8 ... v4-8192, v5p-8 ..., v5e-1, v5e-4 ... v5e-256, v6e-...)."""
    out = {}
    for gen_name, gen in GENERATIONS.items():
        grids = list(_chip_grids(gen.dims, gen.max_chips))
        if gen.dims == 2:
            grids.insert(0, (1, 1))
        for grid in grids:
            chips = math.prod(grid)
            name = f"{gen_name}-{chips * gen.cores_per_name_unit}"
            bounds = tuple(min(g, b) for g, b in zip(grid + (1,) * (3 - len(grid)), (2, 2, 1)))
            out[name] = Target(
                name=name,
                platform="tpu",
                topology=f"{gen.topology_prefix}:{'x'.join(map(str, grid))}",
                chip_config=gen.chip_config,
                host_bounds=bounds,
                devices_per_slice=chips,
                hbm_bytes=int(gen.hbm_gib * GIB),
            )
    return out


GPU_NAMES = f"{', '.join(f'{m}-N' for m in GPU_MODELS)} (N GPUs: 1, 2, 4 or a multiple of {GPUS_PER_HOST})"


def gpu_target(name: str):
    """The Target for a100-N, h100-N, h200-N or b200-N; None when `name` is not of that form."""
    model, _, count = name.partition("-")
    if model not in GPU_MODELS or not count.isdigit():
        return None
    n = int(count)
    if n not in (1, 2, 4) and (n < GPUS_PER_HOST or n % GPUS_PER_HOST):
        return None
    per_host = min(n, GPUS_PER_HOST)
    spec = GPU_MODELS[model]
    return Target(
        name=name,
        platform="gpu",
        topology=f"1x{n // per_host}x{per_host}",
        devices_per_slice=n,
        hbm_bytes=spec.memory_mib * MIB,
        usable_fraction=float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75")),
        target_config=spec.target_config(),
    )


def resolve_target(name: str) -> Target:
    """The Target for compile_topology=name, or a ConfigError saying why there is none."""
    if name == "local":
        return Target(name="local", platform="local")
    targets = known_targets()
    if name in targets:
        return targets[name]
    target = gpu_target(name.lower())
    if target is not None:
        return target
    if name.lower().startswith(GPU_PREFIXES):
        raise ConfigError(
            f"compile_topology={name!r}: no description of this GPU target; GPU targets are {GPU_NAMES}. "
            "For another GPU, compile on the target machine with compile_topology=local"
        )
    known = ", ".join(targets)
    raise ConfigError(
        f"compile_topology={name!r}: unknown target; expected local, {GPU_NAMES}, or one of: {known}"
    )


def libtpu_available() -> bool:
    return bool(os.environ.get("TPU_LIBRARY_PATH")) or importlib.util.find_spec("libtpu") is not None


def cuda_plugin_available() -> bool:
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:  # no jax_plugins namespace at all
        return False


def _gpu_devices(target: Target, num_slices: int) -> list:
    if num_slices != 1:
        raise ConfigError(
            f"compile_topology_num_slices={num_slices}: GPU targets are one slice whose hosts are the DCN "
            f"granule; name all the GPUs ({target.name.split('-')[0]}-{target.devices_per_slice * num_slices}) "
            "and set dcn_*_parallelism to the number of hosts"
        )
    if not cuda_plugin_available():
        raise ConfigError(
            f"compile_topology={target.name}: GPU targets need JAX's CUDA plugin, not importable; {CUDA_INSTALL_HINT}"
        )
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

    desc = topologies.get_topology_desc(
        platform="cuda", topology=target.topology, target_config=target.target_config
    )
    return list(desc.devices)


def target_devices(target: Target, num_slices: int) -> list:
    """The (compile-only, for TPU and GPU) devices of `num_slices` slices of the target."""
    if target.platform == "local":
        if num_slices != 1:
            raise ConfigError(
                f"compile_topology_num_slices={num_slices}: compile_topology=local has one slice"
            )
        return jax.devices()
    if target.platform == "gpu":
        return _gpu_devices(target, num_slices)
    if not libtpu_available():
        raise ConfigError(
            f"compile_topology={target.name}: TPU targets need libtpu, not installed; {INSTALL_HINT}"
        )
    # libtpu otherwise asks the cloud metadata server what TPU host this is and warns that it cannot tell;
    # it only describes the target here. Values already set win.
    for key, value in (
        ("TPU_SKIP_MDS_QUERY", "1"),
        ("TPU_ACCELERATOR_TYPE", target.name),
        ("TPU_WORKER_HOSTNAMES", "localhost"),
    ):
        os.environ.setdefault(key, value)
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

    desc = topologies.get_topology_desc(
        platform="tpu",
        topology_name=target.topology,
        chip_config_name=target.chip_config,
        chips_per_host_bounds=target.host_bounds,
        num_slices=num_slices,
    )
    return list(desc.devices)


def _shard_bytes(abstract_tree, shardings) -> int:
    leaves = jax.tree.leaves(abstract_tree)
    shards = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize for a, s in zip(leaves, shards))


def memory_report(compiled, abstract_state, shardings) -> dict:
    """Bytes per device: params and optimizer state (from their shardings) and XLA's memory analysis.

    total = arguments + outputs - aliased (donated state is updated in place) + temp + generated code.
    """
    m = compiled.memory_analysis()
    out = {
        "params": _shard_bytes(abstract_state.params, shardings.params),
        "optimizer_state": _shard_bytes(abstract_state.opt_state, shardings.opt_state),
        "arguments": int(m.argument_size_in_bytes),
        "outputs": int(m.output_size_in_bytes),
        "aliased": int(m.alias_size_in_bytes),
        "temp": int(m.temp_size_in_bytes),
        "generated_code": int(m.generated_code_size_in_bytes),
    }
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temp"] + out["generated_code"]
    return out


# Custom calls that mark a Pallas kernel in a compiled program: Triton on GPU, Mosaic on TPU.
PALLAS_CALLS = {"gpu": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def pallas_kernel_calls(compiled, platform: str) -> int:
    """How many Pallas kernels (custom calls of the platform's kind) the compiled program's HLO contains."""
    call = PALLAS_CALLS.get(platform)
    if call is None:
        return 0
    return sum(text.count(f'custom_call_target="{call}"') for text in _hlo_texts(compiled))


def _hlo_texts(compiled) -> list:
    texts = compiled.as_text()
    return texts if isinstance(texts, list) else [texts]


def compiled_flops(compiled) -> float:
    """XLA's FLOP count of the compiled per-device program (0 when the backend gives none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def check_fits(report, target: Target, compiler_message: str = "") -> None:
    """ConfigError when the step needs more than the memory a job may use per device of the target (report
    None: the compiler itself refused, with compiler_message)."""
    if not target.hbm_bytes or (report is not None and report["total"] <= target.usable_bytes):
        return
    need = (
        f"XLA: {compiler_message}" if report is None else f"needs {report['total'] / GIB:.2f} GiB per device"
    )
    raise ConfigError(
        f"compile_topology={target.name}: the train step does not fit a {target.name.split('-')[0]} device's "
        f"{target.memory_text()} ({need}); lower per_device_batch_size or max_target_length, "
        "set remat_policy=full, or shard more (ici_fsdp_parallelism)"
    )


# Keys that never change the compiled train step: a saved executable still serves a run that differs only here.
RUN_ONLY_KEYS = frozenset(
    """run_name base_output_directory enable_checkpointing async_checkpointing checkpoint_period
    max_num_checkpoints_to_keep load_parameters_path log_period eval_interval eval_steps target_eval_loss
    profiler profiler_steps skip_first_n_steps_for_profiler peak_tflops_per_device compile_topology
    compile_topology_num_slices compiled_trainstep_file jax_distributed_initialization_timeout""".split()
)


def step_fingerprint(cfg) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY_KEYS}


def device_signature(devices) -> dict:
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
    }


def save_executable(path: str, compiled, cfg, devices) -> None:
    payload, in_tree, out_tree = serialize_executable.serialize(compiled)
    record = {
        "executable": payload,
        "in_tree": in_tree,
        "out_tree": out_tree,
        "devices": device_signature(devices),
        "config": step_fingerprint(cfg),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(record, f)


def load_executable(path: str, cfg, devices):
    """The saved train step, loaded for `devices`; ConfigError when it was compiled for another target or
    with settings that change the step."""
    key = f"compiled_trainstep_file={path!r}"
    try:
        with open(path, "rb") as f:
            record = pickle.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{key}: no such file (write it with python3 -m MaxText.train_compile)") from None
    here = device_signature(devices)
    if record["devices"] != here:
        raise ConfigError(f"{key}: compiled for {record['devices']}, but this run has {here}")
    mine = step_fingerprint(cfg)
    diff = sorted(k for k in set(mine) | set(record["config"]) if mine.get(k) != record["config"].get(k))
    if diff:
        shown = ", ".join(f"{k}={record['config'].get(k)!r} there vs {mine.get(k)!r} here" for k in diff[:5])
        raise ConfigError(f"{key}: compiled with different settings ({shown})")
    return serialize_executable.deserialize_and_load(
        record["executable"], record["in_tree"], record["out_tree"], execution_devices=devices
    )
