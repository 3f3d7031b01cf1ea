"""Builds the device mesh from ici_*/dcn_*_parallelism and maps logical axis names onto it.

Axes (cfg.mesh_axes orders them; later axes are the faster-varying, nearest devices): data, stage, fsdp,
fsdp_transpose, sequence, context, tensor, tensor_sequence, expert, autoregressive. Each has a degree within a
slice (`ici_<name>_parallelism`) and across slices (`dcn_<name>_parallelism`); the stage axis is named
`pipeline` in its keys, as in MaxText. Each group (ici, dcn) allows one -1, which takes what is left.

Slices: devices whose `slice_index` differs (Cloud TPU multislice) are grouped by it. Otherwise (one TPU
slice, CPU, GPU) each process is a slice when a dcn degree is set above 1, else all devices form one slice. With more than one
slice the mesh is hybrid: each axis is dcn x ici, the dcn part outermost (mesh_utils.create_hybrid_device_mesh).
"""

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from MaxText.config import Config, ConfigError
from MaxText.config.schema import MESH_AXES  # pylint: disable=unused-import  # re-exported

# Mesh axes that replicate parameters by design; every other axis is expected to shard them.
PARAM_REPLICATING_AXES = ("data",)
PIPELINE_AXIS = "stage"


def parallelism_key(prefix: str, axis: str) -> str:
    """'ici'/'dcn' + axis -> its config key (the stage axis is called pipeline there)."""
    return f"{prefix}_{'pipeline' if axis == 'stage' else axis}_parallelism"


def _resolve(cfg: Config, prefix: str, total: int, what: str) -> list:
    """Per-axis degrees of one group; its -1 fills what the others leave of `total`. Errors name the keys."""
    keys = [parallelism_key(prefix, axis) for axis in cfg.mesh_axes]
    dims = [getattr(cfg, k) for k in keys]
    auto = [i for i, d in enumerate(dims) if d == -1]
    if len(auto) > 1:
        raise ConfigError(f"{keys[auto[0]]} and {keys[auto[1]]} are both -1: at most one axis may auto-fill")
    known = math.prod(d for d in dims if d != -1)
    if auto:
        if total % known:
            others = ", ".join(f"{k}={d}" for k, d in zip(keys, dims) if d not in (1, -1))
            raise ConfigError(
                f"{keys[auto[0]]}=-1: the other {prefix}_* degrees ({others}) multiply to {known}, which does "
                f"not divide the {total} {what}"
            )
        dims[auto[0]] = total // known
    if math.prod(dims) != total:
        listing = ", ".join(f"{k}={d}" for k, d in zip(keys, dims) if d != 1) or f"every {prefix}_* degree 1"
        raise ConfigError(f"{listing}: product {math.prod(dims)} != {total} {what}")
    return dims


def _dcn_requested(cfg: Config) -> bool:
    return any(getattr(cfg, parallelism_key("dcn", axis)) > 1 for axis in cfg.mesh_axes)


def slice_granule(cfg: Config, devices) -> tuple:
    """(device attribute that groups devices into slices or None, number of slices). See the module docstring."""
    slices = {getattr(d, "slice_index", 0) for d in devices}
    if len(slices) > 1:
        return "slice_index", len(slices)
    if _dcn_requested(cfg):
        return "process_index", len({d.process_index for d in devices})
    return None, 1


def mesh_shapes(cfg: Config, num_devices: int, num_slices: int = 1) -> tuple:
    """(ici degrees, dcn degrees), per axis of cfg.mesh_axes. Errors name the keys."""
    if num_devices % num_slices:
        raise ConfigError(f"{num_devices} devices do not split evenly into {num_slices} slices")
    ici = _resolve(cfg, "ici", num_devices // num_slices, "devices per slice")
    dcn = _resolve(cfg, "dcn", num_slices, "slices")
    return ici, dcn


def mesh_shape(cfg: Config, num_devices: int, num_slices: int = 1) -> list:
    """The combined per-axis degrees (ici x dcn)."""
    ici, dcn = mesh_shapes(cfg, num_devices, num_slices)
    return [i * d for i, d in zip(ici, dcn)]


def device_grid(cfg: Config, devices) -> np.ndarray:
    """The devices arranged in the mesh shape (ici x dcn per axis, slices outermost within each axis)."""
    granule, num_slices = slice_granule(cfg, devices)
    ici, dcn = mesh_shapes(cfg, len(devices), num_slices)
    if num_slices > 1:
        return mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices=devices, process_is_granule=granule == "process_index"
        )
    try:
        return mesh_utils.create_device_mesh(ici, devices=devices)
    except (ValueError, AssertionError, NotImplementedError):
        return np.asarray(devices).reshape(ici)


def make_mesh(cfg: Config, devices=None) -> Mesh:
    """A Mesh with Auto axis types (so sharding constraints apply), axes named by cfg.mesh_axes."""
    devices = devices if devices is not None else jax.devices()
    return Mesh(device_grid(cfg, devices), tuple(cfg.mesh_axes))


def axis_rules(cfg: Config, mesh: Mesh = None) -> tuple:
    """logical_axis_rules as Flax wants them: ((logical, mesh axis or tuple of axes), ...).

    With `mesh`, axes of size 1 are dropped from each rule: they shard nothing, and leaving them out keeps
    partition specs readable and stops them from blocking a later rule that reuses the axis.
    """

    def target(t):
        axes = t if isinstance(t, list) else [t]
        if mesh is not None:
            axes = [a for a in axes if mesh.shape[a] > 1]
        if not axes:
            return None
        return axes[0] if len(axes) == 1 else tuple(axes)

    return tuple((name, target(t)) for name, t in cfg.logical_axis_rules)


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


def _ideal_shards(sharding: NamedSharding, mesh: Mesh) -> int:
    """How many ways a parameter should be split: every axis but data; the stage axis only splits the layer
    stacks (pipeline stages), so arrays it leaves whole (embeddings, final norm) are not counted short."""
    used = {
        a
        for part in sharding.spec
        if part is not None
        for a in (part if isinstance(part, tuple) else (part,))
    }
    skip = set(PARAM_REPLICATING_AXES) | ({PIPELINE_AXIS} - used)
    return math.prod(n for axis, n in mesh.shape.items() if axis not in skip)


def check_params_sharded(abstract_params, shardings, mesh: Mesh, tolerance: float) -> float:
    """Raises ConfigError when params are not spread over the mesh; returns the excess (0 = perfectly sharded).

    Ideal: every device holds total / (product of the mesh axes other than data) elements (arrays that the
    stage axis leaves whole are only expected to be split over the others). The excess is how
    far the per-device share goes beyond that, relative to the ideal. Norm scales and other small vectors
    replicated over some axes make it slightly positive; a large matrix left unsharded makes it large.
    """
    leaves = jax.tree.leaves(abstract_params)
    shards = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    per_device = sum(math.prod(s.shard_shape(a.shape)) for a, s in zip(leaves, shards))
    ideal = sum(math.prod(a.shape) / _ideal_shards(s, mesh) for a, s in zip(leaves, shards))
    excess = per_device / ideal - 1.0
    if excess > tolerance:
        worst = max(zip(leaves, shards), key=lambda p: math.prod(p[1].shard_shape(p[0].shape)))
        raise ConfigError(
            f"sharding_tolerance={tolerance}: each device holds {per_device:,} parameter elements, "
            f"{100 * excess:.1f}% above the ideal {ideal:,.0f} for mesh {dict(mesh.shape)} (largest shard: "
            f"{worst[0].shape} as {worst[1].spec}); check logical_axis_rules and the ici_*/dcn_* degrees"
        )
    return excess


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
    """Makes `mesh` current and `rules` the logical axis rules (needed while tracing sharded code)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
