"""Several LoRA adapters served at once over one base: each request (each decode slot) picks one.

The adapters are stacked, with an all-zero adapter 0 for requests of the base: every `lora_a [*in, r]`
becomes `[*in, K + 1, r]` and every `lora_b [r, *out]` becomes `[K + 1, r, *out]`, with each adapter's scale
(lora_alpha / r) folded into its B. Each engine call gathers its rows' adapters (`with_rows`), so a batch
mixes requests of different adapters and of the base, and a row's tokens depend on its own adapter only
(layers/lora.py, `LoraSpec.rows`). Adapters on routed experts change the expert weights themselves and cannot
differ per row; serving several of those at once is refused.
"""

import dataclasses

import jax
import jax.numpy as jnp

from MaxText.layers import lora


def _last(path) -> str:
    return str(getattr(path[-1], "key", path[-1]))


@dataclasses.dataclass(frozen=True)
class AdapterSet:
    """names[k - 1] is adapter k. trees: each adapter's params (the adapter leaves only, in the base's
    layout), B not yet scaled; scales: lora_alpha / r of each."""

    names: tuple
    rank: int
    targets: tuple  # lora_target_modules, the same for every adapter
    trees: tuple
    scales: tuple

    def __post_init__(self):
        if lora.EXPERTS in self.targets:
            raise ValueError(
                "adapters on the routed experts (lora_target_modules 'experts') change the expert weights and "
                "cannot differ per request; serve such an adapter alone with lora_path="
            )

    def map_trees(self, fn) -> "AdapterSet":
        return dataclasses.replace(self, trees=tuple(fn(t) for t in self.trees))

    def model_config(self, mcfg):
        """The model that applies one adapter per row (scales already in B)."""
        return mcfg.replace(
            lora_rank=self.rank,
            lora_alpha=float(self.rank),
            lora_target_modules=tuple(self.targets),
            lora_rows=True,
        )

    def stacked(self) -> dict:
        """The adapter leaves stacked along the row-choice axis, adapter 0 all zeros."""

        def stack(path, *leaves):
            name = _last(path)
            if name == "lora_b":
                leaves = [s * leaf for s, leaf in zip(self.scales, leaves)]
            axis = leaves[0].ndim - 1 if name == "lora_a" else 0  # [*in, K + 1, r] | [K + 1, r, *out]
            return jnp.stack([jnp.zeros_like(leaves[0])] + list(leaves), axis=axis)

        return jax.tree_util.tree_map_with_path(stack, *self.trees)

    @staticmethod
    def count(stack) -> int:
        """The adapters in a stack (adapter 0, the base's zeros, not counted)."""
        leaf = next(
            leaf for path, leaf in jax.tree_util.tree_flatten_with_path(stack)[0] if _last(path) == "lora_b"
        )
        return leaf.shape[0] - 1

    @staticmethod
    def with_rows(params: dict, stack: dict, adapter_ids) -> dict:
        """params with every adapter leaf set to the rows' adapters: lora_a [*in, B, r], lora_b [B, r, *out]."""

        def rows(path, leaf):
            axis = leaf.ndim - 2 if _last(path) == "lora_a" else 0
            return jnp.take(leaf, adapter_ids, axis=axis)

        return _merge(params, jax.tree_util.tree_map_with_path(rows, stack))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if k in out and isinstance(v, dict) else v
    return out
