"""The pure train and eval steps: (state, batch) -> (state, metrics). Jitted once by the caller.

A batch is a dict of int32 [B, T] arrays: inputs, inputs_position, inputs_segmentation, targets,
targets_segmentation (0 = no loss). Gradient accumulation splits the batch into microbatches of strided
rows (each spread over all data shards), sums token-level losses and gradients, and divides once by the
total token count, so it equals the large-batch step up to float summation order.
"""

import jax
import jax.numpy as jnp
import optax

from MaxText.training.opt_wrappers import SkipState, find_state
from MaxText.training.loss import cross_entropy_sums, moe_load_balance_loss
from MaxText.training.train_state import TrainState


def _sums(model, params, batch, rng, z_loss: float, lb_weight: float = 0.0):
    """Loss sums of one batch. MoE models add lb_weight x (load-balance loss) x tokens to "loss" and report
    the load-balance loss x tokens as "moe_lb_loss", so dividing by the token count gives means."""
    (logits, _), variables = model.apply(
        {"params": params},
        batch["inputs"],
        batch["inputs_position"],
        batch["inputs_segmentation"],
        "train",
        rngs={} if rng is None else {"dropout": rng},
        mutable=["intermediates"],
    )
    sums = cross_entropy_sums(logits, batch["targets"], batch["targets_segmentation"], z_loss)
    lb = moe_load_balance_loss(variables.get("intermediates", {}))
    if lb is None:
        return sums
    lb_sum = lb * sums["tokens"]
    return {**sums, "loss": sums["loss"] + lb_weight * lb_sum, "moe_lb_loss": lb_sum}


def _microbatches(batch, n: int):
    """[B, T] -> [n, B/n, T] taking rows i, i+n, i+2n, ... into microbatch i."""
    return jax.tree.map(lambda x: x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1), batch)


def _grads_and_sums(model, params, batch, rng, z_loss, accumulation_steps, lb_weight=0.0, trainable=None):
    """(gradient sums, loss sums). trainable: a tree of bools like params (None = all); frozen parameters
    are not differentiated, and their gradients are zeros that XLA folds away."""
    leaves, treedef = jax.tree.flatten(params)
    mask = [True] * len(leaves) if trainable is None else treedef.flatten_up_to(trainable)
    train = [p for p, m in zip(leaves, mask) if m]

    def full(train_leaves):
        it = iter(train_leaves)
        return treedef.unflatten([next(it) if m else p for p, m in zip(leaves, mask)])

    def loss_and_sums(t, b, r):
        sums = _sums(model, full(t), b, r, z_loss, lb_weight)
        return sums["loss"], sums

    grad_fn = jax.grad(loss_and_sums, has_aux=True)
    if accumulation_steps == 1:
        grads, sums = grad_fn(train, batch, rng)
    else:

        def body(carry, xs):
            g_acc, s_acc = carry
            mb, i = xs
            g, s = grad_fn(train, mb, jax.random.fold_in(rng, i))
            return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s)), None

        zeros_g = [jnp.zeros(p.shape, jnp.float32) for p in train]
        xs = (_microbatches(batch, accumulation_steps), jnp.arange(accumulation_steps))
        first = jax.tree.map(lambda x: x[0], xs[0])
        zeros_s = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, train, first, rng)[1]
        )
        (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), xs)
    it = iter(grads)
    return treedef.unflatten([next(it) if m else _frozen_zero(p) for p, m in zip(leaves, mask)]), sums


def _frozen_zero(p):
    return jnp.zeros(p.shape, p.dtype if jnp.issubdtype(p.dtype, jnp.inexact) else jnp.float32)


def _grad_dtype(p, g):
    return p.dtype if jnp.issubdtype(p.dtype, jnp.inexact) else g.dtype


def _keep_frozen(new_params, old_params, trainable):
    """Frozen parameters stay exactly as they were (an int8 base is never cast through a float update)."""
    if trainable is None:
        return new_params
    return jax.tree.map(lambda new, old, m: new if m else old, new_params, old_params, trainable)


def train_step(
    model, tx, schedule, z_loss, accumulation_steps, seed, state: TrainState, batch, *, lb_weight: float = 0.0,
    spike_stats: bool = False, trainable=None,
):  # fmt: skip
    """One optimizer step. Returns the new state and scalar metrics (loss is the mean over target tokens,
    including lb_weight x the MoE load-balance loss, which MoE models also report as moe_lb_loss).
    spike_stats: tx skips spikes (optimizers.skip_step_on_spikes) and takes loss= and grad_norm=.
    trainable: a tree of bools like the params, False where frozen (LoRA's base, frozen groups): those are
    not differentiated, count nothing in the gradient norm and stay bit-identical."""
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    grads, sums = _grads_and_sums(
        model, state.params, batch, rng, z_loss, accumulation_steps, lb_weight, trainable
    )
    tokens = jnp.maximum(sums["tokens"], 1.0)
    grads = jax.tree.map(lambda g, p: (g / tokens).astype(_grad_dtype(p, g)), grads, state.params)
    grad_norm = optax.tree.norm(grads)
    extra = {"loss": sums["loss"] / tokens, "grad_norm": grad_norm} if spike_stats else {}
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
    params = _keep_frozen(optax.apply_updates(state.params, updates), state.params, trainable)
    metrics = {
        "loss": sums["loss"] / tokens,
        "z_loss": sums["z_loss"] / tokens,
        "grad_norm": grad_norm,
        "lr": schedule(state.step),
        "tokens": sums["tokens"],
    }
    if "moe_lb_loss" in sums:
        metrics["moe_lb_loss"] = sums["moe_lb_loss"] / tokens
    if spike_stats:
        metrics["skipped_steps"] = find_state(opt_state, SkipState).skipped
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(model, params, batch):
    """Sums for one eval batch: {"ce": nats over target tokens, "tokens": count}."""
    sums = _sums(model, params, batch, None, 0.0)  # no dropout rng: no dropout
    return {"ce": sums["ce"], "tokens": sums["tokens"]}
