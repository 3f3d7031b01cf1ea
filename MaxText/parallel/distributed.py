"""Multi-process start-up and cross-process agreement.

Environment contract (what `MaxText.launch` writes into the JobSet manifest and what start-up reads):

    JAX_COORDINATOR_ADDRESS  host:port of process 0's coordinator (host alone takes JAX_COORDINATOR_PORT,
                             else port 8476)
    JAX_NUM_PROCESSES        number of processes (XPK GPU workloads: NNODES)
    JAX_PROCESS_ID           this process, 0 .. n-1 (XPK: NODE_RANK; a Kubernetes Indexed Job or JobSet:
                             JOB_COMPLETION_INDEX)

With none of them set, or one process, nothing is initialised. On a multi-host Cloud TPU slice (GKE sets
TPU_WORKER_HOSTNAMES) JAX detects the cluster itself. jax.distributed.initialize aborts the process (SIGABRT,
no Python exception) when a peer never joins, so a watchdog thread ends the process first with a clear line.
"""

import dataclasses
import os
import sys
import threading
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from MaxText.config import ConfigError

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
COORDINATOR_PORT_ENV = "JAX_COORDINATOR_PORT"
DEFAULT_PORT = 8476
# Read in order when the JAX_* name is absent: XPK's GPU workloads, then Kubernetes Indexed Jobs.
FALLBACKS = {NUM_PROCESSES_ENV: ("NNODES",), PROCESS_ID_ENV: ("NODE_RANK", "JOB_COMPLETION_INDEX")}
EXIT_DISTRIBUTED = 4
# jax's own deadline is set this much later than ours, so our watchdog (with its clear message) fires first.
_JAX_DEADLINE_MARGIN_S = 10


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How to join the cluster. coordinator None: let JAX detect it (Cloud TPU)."""

    coordinator: Optional[str]
    num_processes: Optional[int]
    process_id: Optional[int]
    source: str  # which variables it came from, for the start-up line


def _lookup(env: Mapping[str, str], name: str) -> tuple:
    """(variable name, value) of `name` or its first set fallback; (name, None) when none is set."""
    for key in (name, *FALLBACKS.get(name, ())):
        if env.get(key, "") != "":
            return key, env[key]
    return name, None


def _int(key: str, value: str, low: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = low - 1
    if n < low:
        raise ConfigError(f"environment {key}={value!r}: expected an integer >= {low}")
    return n


def cluster_from_env(env: Mapping[str, str] = os.environ) -> Optional[Cluster]:
    """The cluster this process belongs to, or None for a single-process run. Bad values: ConfigError."""
    n_key, n_value = _lookup(env, NUM_PROCESSES_ENV)
    id_key, id_value = _lookup(env, PROCESS_ID_ENV)
    address = env.get(COORDINATOR_ENV, "")
    if not address and n_value is None:
        hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
        return Cluster(None, None, None, "TPU_WORKER_HOSTNAMES") if len(hosts) > 1 else None
    num = _int(n_key, n_value, 1) if n_value is not None else None
    if num == 1:
        return None
    missing = [k for k, v in ((COORDINATOR_ENV, address), (n_key, n_value), (id_key, id_value)) if not v]
    if missing:
        raise ConfigError(
            f"environment {', '.join(missing)} not set: a multi-process run needs {COORDINATOR_ENV} "
            f"(host:port), {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV}"
        )
    pid = _int(id_key, id_value, 0)
    if pid >= num:
        raise ConfigError(f"environment {id_key}={pid}: expected a process id below {n_key}={num}")
    if ":" not in address.rsplit("]", 1)[-1]:  # host only (IPv6 literals come bracketed)
        port = env.get(COORDINATOR_PORT_ENV, "") or str(DEFAULT_PORT)
        address = f"{address}:{_int(COORDINATOR_PORT_ENV, port, 1)}"
    return Cluster(address, num, pid, f"{COORDINATOR_ENV}, {n_key}, {id_key}")


def _watchdog(done: threading.Event, timeout_s: int, cluster: Cluster) -> None:
    if done.wait(timeout_s):
        return
    who = f"process {cluster.process_id} of {cluster.num_processes}" if cluster.num_processes else "process"
    where = cluster.coordinator or "the auto-detected coordinator"
    message = (
        f"error: {who} could not join the cluster at {where} within "
        f"jax_distributed_initialization_timeout={timeout_s}s: a peer process did not start, or the "
        f"coordinator address is unreachable ({cluster.source}). Exiting.\n"
    )
    os.write(sys.stderr.fileno(), message.encode())
    os._exit(EXIT_DISTRIBUTED)  # the main thread is blocked inside jax's C++ connect: end the process


def initialize(timeout_s: int, env: Mapping[str, str] = os.environ) -> Optional[Cluster]:
    """Joins the cluster described by `env` (see the module docstring); no-op for one process.

    Must run before any JAX computation. Exits the process with EXIT_DISTRIBUTED when the processes have not
    all joined within `timeout_s` seconds.
    """
    cluster = cluster_from_env(env)
    if cluster is None:
        return None
    done = threading.Event()
    threading.Thread(target=_watchdog, args=(done, timeout_s, cluster), daemon=True).start()
    try:
        jax.distributed.initialize(
            coordinator_address=cluster.coordinator,
            num_processes=cluster.num_processes,
            process_id=cluster.process_id,
            initialization_timeout=timeout_s + _JAX_DEADLINE_MARGIN_S,
        )
    finally:
        done.set()
    return cluster


@jax.jit
def _any(flags: jax.Array) -> jax.Array:
    return jnp.any(flags)


class StopAgreement:
    """Makes every process stop at the same step when any one of them is asked to (SIGTERM on one host).

    Each step, every process contributes its local flag to a tiny all-reduce (OR) and reads the result of the
    previous step's reduction, which has finished by then: all processes see the same value at the same step
    without waiting on the device. One process: the local flag, directly.
    """

    def __init__(self, mesh: Mesh):
        self._multi = jax.process_count() > 1
        self._sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
        self._size = mesh.devices.size
        self._pending = None

    def should_stop(self, local: bool) -> bool:
        """Call exactly once per step on every process, with this process's flag."""
        if not self._multi:
            return local
        shards = [jax.device_put(np.array([local]), d) for d in self._sharding.addressable_devices]
        flags = jax.make_array_from_single_device_arrays((self._size,), self._sharding, shards)
        previous, self._pending = self._pending, _any(flags)
        return previous is not None and bool(previous)
