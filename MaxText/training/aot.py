"""Ahead-of-time compilation targets, the per-device memory report and the saved train-step executable.

A target is `local` (this machine's devices) or a Cloud TPU slice named as MaxText names them: v4-8, v5p-128
(TensorCores, two per chip, one JAX device per chip), v5e-16, v6e-256 (chips). TPU targets come from JAX's
topology descriptions (jax.experimental.topologies.get_topology_desc), which libtpu provides on a host
without TPUs; nothing else is guessed: GPU names and unknown names are refused.

HBM per JAX device (one chip for v4/v5p/v5e/v6e), from Cloud TPU's system architecture pages:
  v4  32 GiB   https://cloud.google.com/tpu/docs/v4
  v5e 16 GiB   https://cloud.google.com/tpu/docs/v5e
  v5p 95 GiB   https://cloud.google.com/tpu/docs/v5p
  v6e 32 GiB   https://cloud.google.com/tpu/docs/v6e
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
class Target:
    """One compile target. For TPU: libtpu's topology name and host bounds; devices = chips per slice."""

    name: str
    platform: str  # "tpu" or "local"
    topology: str = ""
    chip_config: str = ""
    host_bounds: tuple = ()
    devices_per_slice: int = 0
    hbm_bytes: int = 0  # 0: unknown (local targets: no memory check)


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


def resolve_target(name: str) -> Target:
    """The Target for compile_topology=name, or a ConfigError saying why there is none."""
    if name == "local":
        return Target(name="local", platform="local")
    targets = known_targets()
    if name in targets:
        return targets[name]
    known = ", ".join(targets)
    if name.lower().startswith(GPU_PREFIXES):
        raise ConfigError(
            f"compile_topology={name!r}: GPU targets have no topology description on a host without that GPU; "
            f"compile on the target machine with compile_topology=local. TPU targets: {known}"
        )
    raise ConfigError(f"compile_topology={name!r}: unknown target; expected local or one of: {known}")


def libtpu_available() -> bool:
    return bool(os.environ.get("TPU_LIBRARY_PATH")) or importlib.util.find_spec("libtpu") is not None


def target_devices(target: Target, num_slices: int) -> list:
    """The (compile-only, for TPU) devices of `num_slices` slices of the target."""
    if target.platform == "local":
        if num_slices != 1:
            raise ConfigError(
                f"compile_topology_num_slices={num_slices}: compile_topology=local has one slice"
            )
        return jax.devices()
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


def compiled_flops(compiled) -> float:
    """XLA's FLOP count of the compiled per-device program (0 when the backend gives none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def check_fits(report, target: Target, compiler_message: str = "") -> None:
    """ConfigError when the step needs more than the target's HBM per device (report None: the compiler
    itself refused, with compiler_message)."""
    if not target.hbm_bytes or (report is not None and report["total"] <= target.hbm_bytes):
        return
    need = (
        f"XLA: {compiler_message}" if report is None else f"needs {report['total'] / GIB:.2f} GiB per device"
    )
    raise ConfigError(
        f"compile_topology={target.name}: the train step does not fit a {target.name.split('-')[0]} device's "
        f"{target.hbm_bytes / GIB:.0f} GiB HBM ({need}); lower per_device_batch_size or max_target_length, "
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
