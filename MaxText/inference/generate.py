"""Prefill and autoregressive decode on the training model, with an explicit KV cache.

Axis legend: B batch, P prompt bucket length, S cache length, V vocab.

Prompts are right-padded to the bucket P. Row b's real tokens sit at positions 0..len_b-1 (segment 1); pads
get segment 0 so no real token attends to them, and the cache slots they fill are overwritten by generated
tokens before any query can see them (a query at position p sees slots <= p).
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from MaxText.inference.kv_cache import init_cache
from MaxText.inference.sampling import SamplingConfig, sample


def prefill(model, params, ids, lengths, cache):
    """ids [B, P], lengths [B] -> (logits at each row's last prompt token [B, V], cache)."""
    b, p = ids.shape
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    segments = (positions < lengths[:, None]).astype(jnp.int32)
    logits, cache = model.apply({"params": params}, ids, positions, segments, "prefill", cache)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return last, cache


def decode_step(model, params, tokens, positions, cache):
    """tokens/positions [B] -> (next-token logits [B, V], cache with these tokens written)."""
    ones = jnp.ones((tokens.shape[0], 1), jnp.int32)
    logits, cache = model.apply(
        {"params": params}, tokens[:, None], positions[:, None], ones, "autoregressive", cache
    )
    return logits[:, 0], cache


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Static decode shapes and stopping: prompts padded to prefill_length, at most max_new tokens."""

    prefill_length: int
    max_new: int
    eos_id: int
    pad_id: int
    sampling: SamplingConfig

    @property
    def cache_length(self) -> int:
        return self.prefill_length + self.max_new


def _first(model, settings, params, ids, lengths, rng):
    cache = init_cache(model.config, ids.shape[0], settings.cache_length)
    logits, cache = prefill(model, params, ids, lengths, cache)
    token = sample(logits, jax.random.fold_in(rng, 0), settings.sampling)
    return token, cache


def _rest(model, settings, params, first, lengths, cache, rng):
    """Generates tokens 1..max_new-1 after `first`; rows stop at EOS (then emit pad)."""
    b = first.shape[0]
    out = jnp.full((b, settings.max_new), settings.pad_id, jnp.int32).at[:, 0].set(first)
    done = first == settings.eos_id

    def cond(carry):
        i, _, _, _, done = carry
        return (i < settings.max_new) & ~jnp.all(done)

    def body(carry):
        i, token, cache, out, done = carry
        logits, cache = decode_step(model, params, token, lengths + i - 1, cache)
        nxt = sample(logits, jax.random.fold_in(rng, i), settings.sampling)
        nxt = jnp.where(done, settings.pad_id, nxt)
        return i + 1, nxt, cache, out.at[:, i].set(nxt), done | (nxt == settings.eos_id)

    _, _, _, out, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), first, cache, out, done))
    return out


class Generator:
    """Batched generation with timings. Compiles prefill and the decode loop once per batch size."""

    def __init__(self, model, params, settings: DecodeSettings):
        self.model, self.params, self.settings = model, params, settings
        self._first = jax.jit(functools.partial(_first, model, settings))
        self._rest = jax.jit(functools.partial(_rest, model, settings))
        self._compiled = {}  # batch size -> (first, rest) executables
        self.compile_s = 0.0

    def _executables(self, ids, lengths, rng):
        """Compiles ahead of time (once per batch size) so timings never include compilation."""
        b = ids.shape[0]
        if b not in self._compiled:
            t0 = time.perf_counter()
            first = self._first.lower(self.params, ids, lengths, rng).compile()
            token_shape, cache_shape = jax.eval_shape(self._first, self.params, ids, lengths, rng)
            rest = self._rest.lower(self.params, token_shape, lengths, cache_shape, rng).compile()
            self._compiled[b] = (first, rest)
            self.compile_s += time.perf_counter() - t0
        return self._compiled[b]

    def pad_prompts(self, prompts):
        """Lists of ids -> (ids [B, P] int32, lengths [B] int32). Raises ValueError on empty or long prompts."""
        p = self.settings.prefill_length
        ids = np.full((len(prompts), p), self.settings.pad_id, np.int32)
        for i, prompt in enumerate(prompts):
            if not 0 < len(prompt) <= p:
                raise ValueError(
                    f"prompt {i} has {len(prompt)} tokens: expected 1 to max_prefill_predict_length={p}"
                )
            ids[i, : len(prompt)] = prompt
        return jnp.asarray(ids), jnp.asarray([len(x) for x in prompts], jnp.int32)

    def generate(self, prompts, seed: int = 0) -> dict:
        """prompts: lists of token ids. Returns new ids per prompt (cut at EOS) and timings in seconds."""
        ids, lengths = self.pad_prompts(prompts)
        rng = jax.random.key(seed)
        run_first, run_rest = self._executables(ids, lengths, rng)
        t0 = time.perf_counter()
        first, cache = run_first(self.params, ids, lengths, rng)
        first.block_until_ready()
        t1 = time.perf_counter()
        out = np.asarray(run_rest(self.params, first, lengths, cache, rng))
        t2 = time.perf_counter()
        tokens = []
        for row in out:
            row = row.tolist()
            tokens.append(row[: row.index(self.settings.eos_id)] if self.settings.eos_id in row else row)
        generated = sum(len(t) for t in tokens)
        return {
            "tokens": tokens,
            "time_to_first_token_s": t1 - t0,
            "decode_s": t2 - t1,
            "generated_tokens": generated,
            "decode_tokens_per_s": max(generated - len(prompts), 0) / max(t2 - t1, 1e-9),
        }
