"""The train state and its sharded initialisation. Shapes come from jax.eval_shape before any allocation."""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from MaxText.models.transformer import Transformer, init_params_boxed


@flax.struct.dataclass
class TrainState:
    """step: completed optimizer steps (int32 scalar); params and opt_state are plain array trees."""

    step: jnp.ndarray
    params: dict
    opt_state: optax.OptState


def _init_state_boxed(model, tx, rng):
    params = init_params_boxed(model, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_shardings(model: Transformer, tx, mesh, rules):
    """(abstract unboxed TrainState, matching tree of NamedShardings). Allocates nothing."""
    boxed = jax.eval_shape(lambda: _init_state_boxed(model, tx, jax.random.key(0)))
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    return nn.unbox(boxed), shardings


def init_state(model: Transformer, tx, seed: int, shardings) -> TrainState:
    """Initialises parameters and optimizer state directly into their shards."""
    fn = jax.jit(lambda rng: nn.unbox(_init_state_boxed(model, tx, rng)), out_shardings=shardings)
    return fn(jax.random.key(seed))


def param_count(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
