"""Builds the device mesh from ici_*_parallelism and maps logical axis names onto it."""

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from MaxText.config import Config, ConfigError


def mesh_shape(cfg: Config, num_devices: int) -> list:
    """Resolves the per-axis degrees; one -1 fills the devices left over. Errors name the keys."""
    keys = [f"ici_{axis}_parallelism" for axis in cfg.mesh_axes]
    dims = [getattr(cfg, k) for k in keys]
    auto = [i for i, d in enumerate(dims) if d == -1]
    if len(auto) > 1:
        raise ConfigError(f"{keys[auto[0]]} and {keys[auto[1]]} are both -1: at most one axis may auto-fill")
    known = math.prod(d for d in dims if d != -1)
    if auto:
        if num_devices % known:
            raise ConfigError(
                f"{keys[auto[0]]}=-1: the other degrees multiply to {known}, which does not divide the "
                f"{num_devices} devices"
            )
        dims[auto[0]] = num_devices // known
    if math.prod(dims) != num_devices:
        listing = ", ".join(f"{k}={d}" for k, d in zip(keys, dims))
        raise ConfigError(f"{listing}: product {math.prod(dims)} != {num_devices} devices")
    return dims


def make_mesh(cfg: Config, devices=None) -> Mesh:
    """A Mesh with Auto axis types (so sharding constraints apply), axes named by cfg.mesh_axes."""
    devices = devices if devices is not None else jax.devices()
    shape = mesh_shape(cfg, len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, AssertionError, NotImplementedError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, tuple(cfg.mesh_axes))


def axis_rules(cfg: Config) -> tuple:
    """logical_axis_rules as Flax wants them: ((logical, mesh axis or tuple of axes), ...)."""
    return tuple((name, tuple(t) if isinstance(t, list) else t) for name, t in cfg.logical_axis_rules)


def logical_sharding(mesh: Mesh, rules, names) -> NamedSharding:
    """NamedSharding for an array whose axes carry the logical names `names`."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(names, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh, rules) -> int:
    """Number of shards of the batch axis: the global batch must divide by it."""
    spec = nn.logical_to_mesh_axes(("activation_batch",), rules)[0]
    axes = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
    return math.prod(mesh.shape[a] for a in axes)


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
    """Makes `mesh` current and `rules` the logical axis rules (needed while tracing sharded code)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
