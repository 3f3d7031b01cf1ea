"""The optimizer pieces optax does not have: adam_pax's moments, Muon's shape scaling as a public
transform, a weight EMA kept in the optimizer state, and skipping the update on a loss or grad-norm spike.

Each is an optax GradientTransformation whose state is a NamedTuple of arrays, so it checkpoints with the
rest of the optimizer state.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import contrib


def _bias_corrected_decay(count, decay: float):
    """decay x (1 - decay^(t-1)) / (1 - decay^t) at step t = count + 1: an average with this decay is the
    bias-corrected average itself (Adafactor paper, section 7.1)."""
    t = jnp.asarray(count, jnp.float32) + 1.0
    return decay * (1.0 - decay ** (t - 1.0)) / (1.0 - decay**t)


def scale_by_adam_pax(b1: float, b2: float, eps: float, eps_root: float) -> optax.GradientTransformation:
    """Adam as Praxis's sharded_adam writes it (MaxText's adam_pax): the moments are kept bias-corrected
    (each step decays by _bias_corrected_decay) and the update is mu / (sqrt(nu + eps_root) + eps). Weight
    decay and the learning rate follow in the chain, as for adamw."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update(updates, state, params=None):
        del params
        d1 = _bias_corrected_decay(state.count, b1)
        d2 = _bias_corrected_decay(state.count, b2)
        mu = jax.tree.map(
            lambda g, m: (1.0 - d1).astype(g.dtype) * g + d1.astype(g.dtype) * m, updates, state.mu
        )
        nu = jax.tree.map(
            lambda g, v: (1.0 - d2).astype(g.dtype) * g * g + d2.astype(g.dtype) * v, updates, state.nu
        )
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu, nu)
        return out, optax.ScaleByAdamState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def _axes(a) -> tuple:
    return (a,) if isinstance(a, int) else tuple(a)


def _fans(x, dims: contrib.MuonDimensionNumbers) -> tuple:
    axis = _axes
    fan_in = math.prod(x.shape[i] for i in axis(dims.reduction_axis))
    fan_out = math.prod(x.shape[i] for i in axis(dims.output_axis))
    return fan_in, fan_out


def scale_by_muon_shape(dims_of, consistent_rms=None) -> optax.GradientTransformation:
    """Muon's update scale per matrix: consistent_rms x sqrt(max(fan_in, fan_out)) (an RMS like AdamW's;
    Liu et al. 2025), or with None the shape rule sqrt(max(1, fan_out / fan_in)) (Jordan's Muon). The same
    rule optax.contrib.muon applies, which it does not export on its own."""

    def update(updates, state, params=None):
        del params

        def scale(x, dims):
            fan_in, fan_out = _fans(x, dims)
            if consistent_rms is None:
                return x * math.sqrt(max(1.0, fan_out / fan_in))
            return x * (consistent_rms * math.sqrt(max(fan_in, fan_out)))

        def is_dims(d):
            return isinstance(d, contrib.MuonDimensionNumbers)

        return jax.tree.map(scale, updates, dims_of(updates), is_leaf=is_dims), state

    return optax.GradientTransformation(optax.init_empty_state, update)


class EmaParamsState(NamedTuple):
    """The exponential moving average of the weights after each step."""

    ema: Any


def ema_of_params(decay: float) -> optax.GradientTransformation:
    """Last in the chain: ema <- decay x ema + (1 - decay) x (params + updates), i.e. of the new weights."""

    def init(params):
        return EmaParamsState(ema=jax.tree.map(jnp.array, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("ema_of_params needs the parameters")
        new = jax.tree.map(
            lambda e, p, u: (decay * e + (1.0 - decay) * (p + u)).astype(e.dtype), state.ema, params, updates
        )
        return updates, EmaParamsState(ema=new)

    return optax.GradientTransformation(init, update)


class SkipState(NamedTuple):
    """The inner state, the last `interval` losses and grad norms (a ring), steps seen and steps skipped."""

    inner: Any
    losses: jax.Array
    grad_norms: jax.Array
    count: jax.Array
    skipped: jax.Array


def skip_on_spikes(inner: optax.GradientTransformation, interval: int, factor: float):
    """Skips the update (zero update, inner state unchanged) when the loss or the grad norm exceeds factor x
    its mean over the last `interval` steps. Every step enters the window, skipped or not, so a lasting
    change becomes the new baseline. Nothing is skipped until half the window (at least 2 steps) is in.
    update() takes loss= and grad_norm= as extra arguments (the train step passes them)."""
    inner = optax.with_extra_args_support(inner)
    warm = max(2, interval // 2)

    def init(params):
        zeros = jnp.zeros((interval,), jnp.float32)
        count = jnp.zeros([], jnp.int32)
        return SkipState(inner=inner.init(params), losses=zeros, grad_norms=zeros, count=count, skipped=count)

    def update(updates, state, params=None, *, loss, grad_norm, **extra):
        seen = jnp.minimum(state.count, interval)
        window = jnp.arange(interval) < seen

        def mean(ring):
            return jnp.sum(jnp.where(window, ring, 0.0)) / jnp.maximum(seen, 1)

        loss, grad_norm = jnp.asarray(loss, jnp.float32), jnp.asarray(grad_norm, jnp.float32)
        spike = (loss > factor * mean(state.losses)) | (grad_norm > factor * mean(state.grad_norms))
        skip = spike & (state.count >= warm)
        new_updates, new_inner = jax.lax.cond(
            skip,
            lambda: (jax.tree.map(jnp.zeros_like, updates), state.inner),
            lambda: inner.update(updates, state.inner, params, **extra),
        )
        slot = state.count % interval
        return new_updates, SkipState(
            inner=new_inner,
            losses=state.losses.at[slot].set(loss),
            grad_norms=state.grad_norms.at[slot].set(grad_norm),
            count=state.count + 1,
            skipped=state.skipped + skip.astype(jnp.int32),
        )

    return optax.GradientTransformationExtraArgs(init, update)


def find_state(opt_state, kind):
    """The first state of type `kind` inside an optimizer state, or None."""
    found = [
        x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kind)) if isinstance(x, kind)
    ]
    return found[0] if found else None


def eval_params(state):
    """The weights eval runs on: the EMA when ema_decay keeps one, else the parameters. (Readers of a saved
    checkpoint find the EMA through checkpointing.load_params(ema=True) and maxtext_to_hf.export.)"""
    ema = find_state(state.opt_state, EmaParamsState)
    return state.params if ema is None else ema.ema
