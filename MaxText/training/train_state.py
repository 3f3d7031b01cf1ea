"""The train state and its sharded initialisation. Shapes come from jax.eval_shape before any allocation."""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from MaxText.models.transformer import Transformer, init_params_boxed
from MaxText.training.optimizers import path_name


@flax.struct.dataclass
class TrainState:
    """step: completed optimizer steps (int32 scalar); params and opt_state are plain array trees."""

    step: jnp.ndarray
    params: dict
    opt_state: optax.OptState


def _fitting_boxes(tree, params):
    """Optimizer state built by tree-mapping over the boxed params keeps each param's logical axes, which fit
    a state leaf only of that param's shape. Other leaves (Adafactor's factored row and column moments, and
    the shape-(1,) stand-ins it keeps for the moments it does not factor) are unboxed, i.e. replicated."""

    def is_box(x):
        return isinstance(x, nn.LogicallyPartitioned)

    shaped = {(b.names, jnp.shape(b.value)) for b in jax.tree.leaves(params, is_leaf=is_box) if is_box(b)}

    def fit(x):
        return x if not is_box(x) or (x.names, jnp.shape(x.value)) in shaped else x.value

    return jax.tree.map(fit, tree, is_leaf=is_box)


def _boxed_state(params, tx) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=_fitting_boxes(tx.init(params), params)
    )


def _init_state_boxed(model, tx, rng):
    return _boxed_state(init_params_boxed(model, rng), tx)


def abstract_boxed_params(model: Transformer):
    """The model's parameters as ShapeDtypeStructs in their logical-axis boxes. Allocates nothing."""
    return jax.eval_shape(lambda: init_params_boxed(model, jax.random.key(0)))


def param_axes(boxed_params) -> dict:
    """{parameter path (decoder/layers/mlp/wo/kernel): its logical axis names}."""
    specs = nn.get_partition_spec(boxed_params)
    flat = jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    return {path_name(path): tuple(spec) for path, spec in flat[0]}


def state_shardings(boxed_params, tx, mesh, rules):
    """(abstract unboxed TrainState, matching tree of NamedShardings) for abstract_boxed_params(model)."""
    boxed = jax.eval_shape(lambda p: _boxed_state(p, tx), boxed_params)
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    return nn.unbox(boxed), shardings


def init_state(model: Transformer, tx, seed: int, shardings) -> TrainState:
    """Initialises parameters and optimizer state directly into their shards."""
    fn = jax.jit(lambda rng: nn.unbox(_init_state_boxed(model, tx, rng)), out_shardings=shardings)
    return fn(jax.random.key(seed))


def param_count(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
