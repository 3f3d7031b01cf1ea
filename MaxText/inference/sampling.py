"""Token sampling: greedy, temperature, top-k and top-p (nucleus), seeded.

Strategies (MaxText's names): greedy = argmax; weighted = temperature sampling; topk = temperature + top-k;
nucleus = temperature + top-p. For the sampling strategies a nonzero top_k and a top_p < 1 both apply.
"""

import dataclasses

import jax
import jax.numpy as jnp

STRATEGIES = ("greedy", "weighted", "topk", "nucleus")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token; see the module docstring for the strategies."""

    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"decode_sampling_strategy={self.strategy!r}: expected one of {STRATEGIES}")
        if self.strategy == "topk" and self.top_k <= 0:
            raise ValueError("decode_sampling_strategy='topk' needs decode_sampling_top_k > 0")
        if self.strategy == "nucleus" and not 0 < self.top_p <= 1:
            raise ValueError(f"decode_sampling_nucleus_p={self.top_p}: expected 0 < p <= 1")


def _top_k_mask(logits, k: int):
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def _top_p_mask(logits, p: float):
    """Keeps the smallest set of most likely tokens whose probability reaches p (always at least one)."""
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
    keep_sorted = before < p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


def sample(logits, rng, cfg: SamplingConfig):
    """logits [B, V] (any float dtype) -> token ids [B] int32."""
    logits = logits.astype(jnp.float32)
    if cfg.strategy == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / cfg.temperature
    if cfg.top_k > 0:
        logits = _top_k_mask(logits, min(cfg.top_k, logits.shape[-1]))
    if cfg.top_p < 1.0:
        logits = _top_p_mask(logits, cfg.top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def sample_rows(logits, keys, temperature, top_k, top_p):
    """Per-row sampling for a batch of independent requests.

    logits [B, V]; keys [B] PRNG keys; temperature [B] float (0 = greedy); top_k [B] int (0 = off);
    top_p [B] float (1 = off) -> token ids [B] int32. Row b's token depends only on row b's inputs, so a
    request samples the same tokens whatever its neighbours do. The sort is skipped when every row is greedy.
    """
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def stochastic():
        scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
        ordered = -jnp.sort(-scaled, axis=-1)  # descending
        vocab = logits.shape[-1]
        kth = jnp.take_along_axis(ordered, (jnp.clip(top_k, 1, vocab) - 1)[:, None], axis=-1)
        ordered = jnp.where((top_k[:, None] > 0) & (ordered < kth), -jnp.inf, ordered)
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
        keep = (ordered > -jnp.inf) & ((before < top_p[:, None]) | (top_p[:, None] >= 1.0))
        # The least likely token kept (top-k and top-p together); ties with it are kept too.
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        filtered = jnp.where(scaled < threshold, -jnp.inf, scaled)
        drawn = jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    return jax.lax.cond(jnp.all(temperature <= 0), lambda: greedy, stochastic)
