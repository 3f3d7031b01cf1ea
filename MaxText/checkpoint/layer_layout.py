"""Parameters saved with the other scan_layers setting load transparently (scanned <-> per-layer).

scan_layers=true stores a stack as decoder/<name>/... with the layer axis inside every array (at
param_scan_axis); scan_layers=false stores decoder/<name>_0 ... <name>_{n-1}. Comparing the checkpoint's tree
with the target's finds the stacks that differ; the scan axis is the one position where inserting n turns every
per-layer shape into the stacked shape. The restore reads the stored layout, sharded like the target (the
layer axis unsharded), and one jitted reshuffle produces the target layout: a bit-exact copy.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True)
class Restack:
    """Stack `name` of n layers, scanned at `axis`; stored scanned (to_scanned False) or per layer."""

    name: str
    n: int
    axis: int
    to_scanned: bool  # True: the checkpoint is per-layer and the target scanned


def _shapes(tree) -> list:
    return [tuple(x.shape) for x in jax.tree.leaves(tree)]


def _axes(stacked: list, layer: list, n: int) -> set:
    """Axes at which inserting n into every per-layer shape gives the stacked shape."""
    candidates = None
    for s, u in zip(stacked, layer):
        fits = {a for a in range(len(s)) if s[a] == n and s[:a] + s[a + 1 :] == u}
        candidates = fits if candidates is None else candidates & fits
    return candidates or set()


def plan(stored_decoder: dict, target_decoder: dict) -> list:
    """The Restacks that turn the stored decoder tree into the target's; [] when they already match.

    Raises ValueError when the trees differ in some other way.
    """
    stored_only = set(stored_decoder) - set(target_decoder)
    target_only = set(target_decoder) - set(stored_decoder)
    out, matched = [], set()
    for to_scanned in (False, True):
        scanned_tree, layer_tree = (
            (target_decoder, stored_decoder) if to_scanned else (stored_decoder, target_decoder)
        )
        scanned_names, layer_names = (target_only, stored_only) if to_scanned else (stored_only, target_only)
        for name in sorted(scanned_names):
            layers = sorted(
                (int(m.group(1)), k)
                for k in layer_names
                if (m := re.fullmatch(rf"{re.escape(name)}_(\d+)", k))
            )
            n = len(layers)
            if n == 0 or name in matched:
                continue  # not a stack (a per-layer subtree itself, or another difference caught below)
            if [i for i, _ in layers] != list(range(n)):
                raise ValueError(f"decoder/{name}: the per-layer subtrees are not numbered 0..{n - 1}")
            stacked = _shapes(scanned_tree[name])
            axes = set.intersection(*[_axes(stacked, _shapes(layer_tree[k]), n) for _, k in layers])
            if len(axes) != 1:
                raise ValueError(f"decoder/{name}: cannot tell the layer axis of the stacked arrays")
            out.append(Restack(name, n, axes.pop(), to_scanned))
            matched |= {name, *(k for _, k in layers)}
    unmatched = sorted((stored_only | target_only) - matched)
    if unmatched:
        raise ValueError(f"checkpoint and model decoder trees differ in {', '.join(unmatched)}")
    return out


def _spec_without(sharding: NamedSharding, axis: int, ndim: int) -> NamedSharding:
    spec = list(sharding.spec) + [None] * (ndim - len(sharding.spec))
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[:axis], *spec[axis + 1 :]))


def _spec_with(sharding: NamedSharding, axis: int) -> NamedSharding:
    spec = list(sharding.spec) + [None] * max(0, axis - len(sharding.spec))
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[:axis], None, *spec[axis:]))


def stored_abstract(abstract_params: dict, restacks: list) -> dict:
    """The target's abstract params (ShapeDtypeStructs with shardings) rearranged into the stored layout."""
    decoder = dict(abstract_params["decoder"])
    for r in restacks:
        if r.to_scanned:  # the target is stacked; the checkpoint holds one subtree per layer
            stacked = decoder.pop(r.name)
            for i in range(r.n):
                decoder[f"{r.name}_{i}"] = jax.tree.map(
                    lambda a, r=r: jax.ShapeDtypeStruct(
                        a.shape[: r.axis] + a.shape[r.axis + 1 :],
                        a.dtype,
                        sharding=_spec_without(a.sharding, r.axis, a.ndim),
                    ),
                    stacked,
                )
        else:
            layers = [decoder.pop(f"{r.name}_{i}") for i in range(r.n)]
            decoder[r.name] = jax.tree.map(
                lambda a, r=r: jax.ShapeDtypeStruct(
                    a.shape[: r.axis] + (r.n,) + a.shape[r.axis :],
                    a.dtype,
                    sharding=_spec_with(a.sharding, r.axis),
                ),
                layers[0],
            )
    return {**abstract_params, "decoder": decoder}


def _rearrange(params: dict, restacks: list) -> dict:
    decoder = dict(params["decoder"])
    for r in restacks:
        if r.to_scanned:
            layers = [decoder.pop(f"{r.name}_{i}") for i in range(r.n)]
            decoder[r.name] = jax.tree.map(lambda *xs, r=r: jnp.stack(xs, axis=r.axis), *layers)
        else:
            stacked = decoder.pop(r.name)
            for i in range(r.n):
                decoder[f"{r.name}_{i}"] = jax.tree.map(
                    lambda x, i=i, r=r: jnp.take(x, i, axis=r.axis), stacked
                )
    return {**params, "decoder": decoder}


def to_target(params: dict, restacks: list, abstract_params: dict) -> dict:
    """Stored-layout params -> the target layout, placed on the target shardings."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract_params)
    return jax.jit(lambda p: _rearrange(p, restacks), out_shardings=shardings)(params)


def _is_param_tree(x) -> bool:
    return isinstance(x, dict) and "decoder" in x


def _on_param_trees(state, fn):
    """Applies fn to every parameter-shaped subtree of a train state (a dict with a "decoder" entry): the
    params and each optimizer statistic that mirrors them (Adam's mu and nu)."""
    return jax.tree.map(lambda x: fn(x) if _is_param_tree(x) else x, state, is_leaf=_is_param_tree)


def stored_state_abstract(abstract_state, restacks: list):
    """The target's abstract train state (with shardings) in the checkpoint's layer layout."""
    return _on_param_trees(abstract_state, lambda p: stored_abstract(p, restacks))


def state_to_target(state, restacks: list, abstract_state):
    """A train state restored in the stored layout -> the target layout (params and optimizer state alike),
    placed on the target shardings. A bit-exact reshuffle."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract_state)
    return jax.jit(lambda s: _on_param_trees(s, lambda p: _rearrange(p, restacks)), out_shardings=shardings)(
        state
    )
