"""Prefill and one autoregressive decode step on the training model, with an explicit KV cache: the two
device functions the Engine (engine.py) is built from. Generation itself (requests, slots, sampling,
stopping) is the Engine's and the Batcher's; there is no second decode loop.

Axis legend: B batch, P prompt bucket length, S cache length, V vocab.

Prompts are right-padded to the bucket P. Row b's real tokens sit at positions 0..len_b-1 (segment 1); pads
get segment 0 so no real token attends to them, and the cache slots they fill are overwritten by generated
tokens before any query can see them (a query at position p sees slots <= p).
"""

import jax.numpy as jnp


def prefill(model, params, ids, lengths, cache, every_position: bool = False):
    """ids [B, P], lengths [B] -> (logits at each row's last prompt token [B, V], cache), and the logits at
    every position [B, P, V] third when every_position (scoring a prompt: echo)."""
    b, p = ids.shape
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    segments = (positions < lengths[:, None]).astype(jnp.int32)
    logits, cache = model.apply({"params": params}, ids, positions, segments, "prefill", cache)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return (last, cache, logits) if every_position else (last, cache)


def decode_step(model, params, tokens, positions, cache):
    """tokens/positions [B] -> (next-token logits [B, V], cache with these tokens written)."""
    ones = jnp.ones((tokens.shape[0], 1), jnp.int32)
    logits, cache = model.apply(
        {"params": params}, tokens[:, None], positions[:, None], ones, "autoregressive", cache
    )
    return logits[:, 0], cache
