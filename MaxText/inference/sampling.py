"""Token sampling, the one sampler every generation path uses (through the Engine): greedy, temperature,
top-k and top-p (nucleus), per row, seeded per request.

The config's strategies (decode_sampling_strategy) map onto it in session.sampling_params: greedy =
temperature 0 (argmax); weighted, topk and nucleus = temperature sampling with decode_sampling_top_k (0 =
off) and decode_sampling_nucleus_p (1 = off), both applying when set.

Penalties (OpenAI's definitions, per row): logits[j] - frequency * counts[j] - presence * (counts[j] > 0),
counts = how often the row's request has generated token j so far (prompt tokens do not count). They apply
before greedy and temperature alike; rows with both 0 are untouched, so greedy stays greedy.
"""

import jax
import jax.numpy as jnp


def penalized(logits, counts, presence, frequency):
    """logits [B, V] float32, counts [B, V] int, presence/frequency [B] -> the penalized logits [B, V]."""
    counts = counts.astype(jnp.float32)
    return logits - frequency[:, None] * counts - presence[:, None] * (counts > 0).astype(jnp.float32)


def log_probs(logits, ids, k: int):
    """The model's log-probabilities (log_softmax of the raw logits, float32): logits [..., V], ids [...] ->
    (logprob of ids [...], top-k ids [..., k] int32, their logprobs [..., k]); k 0 gives empty top-k."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(lp, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if k == 0:
        empty = lp[..., :0]
        return chosen, empty.astype(jnp.int32), empty
    top_lp, top_ids = jax.lax.top_k(lp, k)
    return chosen, top_ids.astype(jnp.int32), top_lp


def sample_rows(logits, keys, temperature, top_k, top_p, penalties=None):
    """Per-row sampling for a batch of independent requests.

    logits [B, V]; keys [B] PRNG keys; temperature [B] float (0 = greedy); top_k [B] int (0 = off);
    top_p [B] float (1 = off); penalties None or (counts [B, V], presence [B], frequency [B]) -> token ids
    [B] int32. Row b's token depends only on row b's inputs, so a request samples the same tokens whatever
    its neighbours do. The sort is skipped when every row is greedy, the penalties when every row's are 0.
    """
    logits = logits.astype(jnp.float32)
    if penalties is not None:
        counts, presence, frequency = penalties
        logits = jax.lax.cond(
            jnp.any((presence != 0) | (frequency != 0)),
            lambda: penalized(logits, counts, presence, frequency),
            lambda: logits,
        )
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
