"""The serving engine: prefill(request) -> prefix, insert(prefix, state, slot), generate(state) -> tokens.

Axis legend: B decode slots (the fixed decode batch), P prefill bucket, S cache slots per request
(max_length), MP pages per request, U scanned units, K kv heads, H head dim.

Continuous batching: the decode state holds B slots; a request is prefilled alone (batch 1, prompt padded to
the smallest bucket that fits), inserted into a free slot, and decoded with whichever requests occupy the
other slots; a finished request frees its slot (and its pages) for the next one. Shapes never change (B, the
buckets, S are fixed), every row's computation reads only its own cache row or pages, and each request
samples with its own seed folded with its own step count, so a request's tokens never depend on its
neighbours. The cache is contiguous ([B, K, S, H] per layer) or paged (a pool of pages per layer; see
page_manager.py), held per layer (kv_cache.per_layer) so that each decode step updates it in place.

Log-probs (TokenLogprobs: the raw distribution's, float32) are computed on device: every prefill returns
the first token's; prefill(score=True) also the prompt's (a second compiled prefill); generate(logprobs=True)
is a second compiled decode step that also returns each row's chosen log-prob and top MAX_TOP_LOGPROBS, so
the plain step is what it was. Penalties read per-row counts of generated tokens ([B, V] in the state).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from MaxText.inference.generate import decode_step, prefill
from MaxText.inference.kv_cache import (
    init_cache,
    init_paged_cache,
    map_layers,
    per_layer,
    with_page_table,
    without_page_table,
)
from MaxText.inference.page_manager import PageManager
from MaxText.inference.sampling import log_probs, sample_rows
from MaxText.kernels.paged import NULL_PAGE
from MaxText.inference.adapters import AdapterSet
from MaxText.models.transformer import make_model, unstack_layers


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Static engine shapes. num_pages 0 = enough pages for every slot at max_length (plus the null page)."""

    slots: int
    max_length: int
    buckets: tuple
    paged: bool = False
    page_size: int = 16
    num_pages: int = 0

    @property
    def pages_per_request(self) -> int:
        return -(-self.max_length // self.page_size)

    @property
    def pool_pages(self) -> int:
        return self.num_pages or 1 + self.slots * self.pages_per_request

    def __post_init__(self):
        if self.slots < 1 or not self.buckets or max(self.buckets) > self.max_length:
            raise ValueError(f"{self}: expected slots >= 1 and buckets no longer than max_length")

    def bucket_for(self, length: int) -> int:
        for bucket in sorted(self.buckets):
            if length <= bucket:
                return bucket
        raise ValueError(f"prompt of {length} tokens: expected 1 to {max(self.buckets)} (the largest bucket)")


def default_buckets(max_prompt: int, smallest: int = 16) -> tuple:
    """Powers of two from `smallest` up to max_prompt, and max_prompt itself."""
    buckets, b = [], smallest
    while b < max_prompt:
        buckets.append(b)
        b *= 2
    return tuple(buckets) + (max_prompt,)


# How many top log-probs the engine computes when a request asks for any (a request takes its first k).
MAX_TOP_LOGPROBS = 20


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling: temperature 0 = greedy; top_k 0 and top_p 1 are off; presence/frequency
    penalties (OpenAI's, sampling.penalized) 0 are off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"{self}: expected temperature >= 0, top_k >= 0 and 0 < top_p <= 1")

    def arrays(self) -> tuple:
        return (
            np.float32(self.temperature),
            np.int32(self.top_k),
            np.float32(self.top_p),
            np.uint32(self.seed),
        )

    def penalty_arrays(self) -> tuple:
        return np.float32(self.presence_penalty), np.float32(self.frequency_penalty)


@dataclasses.dataclass
class TokenLogprobs:
    """Log-probs of the model's raw distribution (before penalties, temperature, top-k, top-p), float32:
    `chosen` [T] of the tokens taken, `top_ids`/`top` [T, MAX_TOP_LOGPROBS] the largest, descending."""

    chosen: np.ndarray
    top_ids: np.ndarray
    top: np.ndarray


@dataclasses.dataclass
class Prefix:
    """A prefilled request: its prompt's K/V (per layer, kv_cache.per_layer: [1, K, P, H]), first token and
    prompt length."""

    cache: dict
    first_token: jax.Array
    length: int
    max_tokens: int
    sampling: SamplingParams
    adapter: int = 0  # 0: the base alone; k: the k-th served LoRA adapter (AdapterSet)
    logits: jax.Array | None = None  # [1, V] at the last prompt token: fork samples other first tokens
    first: tuple | None = None  # device (logprob [1], top ids [1, k], top logprobs [1, k]) of first_token
    prompt_logprobs: TokenLogprobs | None = None  # of prompt tokens 1.. (length - 1 rows) when scored

    def first_logprobs(self) -> TokenLogprobs:
        return TokenLogprobs(*(np.asarray(a) for a in self.first))


def request_keys(seeds, steps):
    """Row b's sampling key: its request's seed folded with its own step count (nothing of its neighbours)."""
    return jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(seeds, steps)


# Decode runs the layers unrolled: on CPU a scanned decode step slices every layer's weights out of the
# stacked arrays each step and ran ~2x slower. Same weights (a bit-exact reshuffle) and the same cache layout,
# so this changes nothing but speed. A Config or a ModelConfig takes it: cfg.replace(**DECODE_LAYOUT).
DECODE_LAYOUT = {"scan_layers": False, "remat_policy": "none"}


class Engine:
    """Compiled prefill / insert / generate / release over one model. State is a pytree the caller threads
    through (donated on every call); the host-side PageManager tracks which pages each slot holds."""

    def __init__(self, model, params, config: EngineConfig, adapters: AdapterSet | None = None):
        if model.config.scan_layers:  # DECODE_LAYOUT
            unscanned = model.config.replace(**DECODE_LAYOUT)
            if adapters is not None:
                adapters = adapters.map_trees(lambda t: unstack_layers(t, model.config))
            model, params = make_model(unscanned), unstack_layers(params, model.config)
        # Several LoRA adapters at once: every row gathers its own from the stack (layers/lora.py rows).
        self.adapters = adapters.stacked() if adapters is not None else None
        if adapters is not None:
            model = make_model(adapters.model_config(model.config))
        self.model, self.params, self.config = model, params, config
        self.pages = (
            PageManager(config.pool_pages, config.page_size, config.pages_per_request)
            if config.paged
            else None
        )
        self._prefill = jax.jit(self._prefill_fn, static_argnums=(9,))
        self._first = jax.jit(self._first_fn)
        self._insert = jax.jit(self._insert_fn, donate_argnums=(0,))
        # Two decode steps: the plain one, and one that also returns log-probs (compiled when first asked).
        self._generate = jax.jit(self._generate_fn, donate_argnums=(2,), static_argnums=(3,))
        self._release = jax.jit(self._release_fn, donate_argnums=(0,))

    # ---- device functions (pure) ----

    def _with_rows(self, params, stack, adapter_ids):
        """The params with every row's adapter gathered in (just the params when no adapters are served)."""
        return params if stack is None else AdapterSet.with_rows(params, stack, adapter_ids)

    def _first_fn(self, logits, temperature, top_k, top_p, seed):
        """The first token from the last prompt token's logits [1, V] and its log-probs."""
        token = sample_rows(
            logits,
            request_keys(seed[None], jnp.zeros((1,), jnp.int32)),
            temperature[None],
            top_k[None],
            top_p[None],
        )
        return token[0], log_probs(logits, token, MAX_TOP_LOGPROBS)

    def _prefill_fn(self, params, stack, ids, length, temperature, top_k, top_p, seed, adapter, score):
        """score (static): also the log-probs of prompt tokens 1..P-1 under their prefixes."""
        params = self._with_rows(params, stack, adapter[None])
        cache = per_layer(init_cache(self.model.config, 1, ids.shape[1]))
        out = prefill(self.model, params, ids, length[None], cache, every_position=score)
        logits, cache = out[0], out[1]
        token, first = self._first_fn(logits, temperature, top_k, top_p, seed)
        scored = log_probs(out[2][0, :-1], ids[0, 1:], MAX_TOP_LOGPROBS) if score else None
        return token, cache, logits, first, scored

    def _insert_fn(self, state, prefix_cache, slot, token, length, table_row, sampling, adapter):
        cache = state["cache"]
        if self.config.paged:
            positions = jnp.arange(jax.tree.leaves(prefix_cache)[0].shape[2], dtype=jnp.int32)[None]

            def put(pool, pre):  # one layer: a pool [NP, PS, K, H] and the prefix's [1, K, P, H]
                return pool.replace(page_table=table_row[None]).scatter(pre.tokens(), positions)

            cache = without_page_table(map_layers(put, cache, prefix_cache))
        else:
            cache = jax.tree.map(
                lambda c, p: jax.lax.dynamic_update_slice(
                    c, p.astype(c.dtype), (slot,) + (0,) * (c.ndim - 1)
                ),
                cache,
                prefix_cache,
            )
        temperature, top_k, top_p, seed, presence, frequency = sampling
        updates = dict(
            tokens=token, positions=length, steps=1, active=True, temperature=temperature,
            top_k=top_k, top_p=top_p, seeds=seed, adapter=adapter, presence=presence, frequency=frequency,
        )  # fmt: skip
        state = {**state, **{k: state[k].at[slot].set(v) for k, v in updates.items()}, "cache": cache}
        state["counts"] = state["counts"].at[slot].set(0).at[slot, token].add(1)
        if self.config.paged:
            state["table"] = state["table"].at[slot].set(table_row)
        return state

    def _generate_fn(self, params, stack, state, with_logprobs: bool):
        params = self._with_rows(params, stack, state["adapter"])
        cache = state["cache"]
        if self.config.paged:
            cache = with_page_table(cache, state["table"])
        logits, cache = decode_step(self.model, params, state["tokens"], state["positions"], cache)
        if self.config.paged:
            cache = without_page_table(cache)
        keys = request_keys(state["seeds"], state["steps"])
        penalties = (state["counts"], state["presence"], state["frequency"])
        nxt = sample_rows(logits, keys, state["temperature"], state["top_k"], state["top_p"], penalties)
        active = state["active"]
        nxt = jnp.where(active, nxt, 0)
        step = active.astype(jnp.int32)
        rows = jnp.arange(nxt.shape[0])
        return {
            **state,
            "cache": cache,
            "tokens": nxt,
            "positions": state["positions"] + step,
            "steps": state["steps"] + step,
            "counts": state["counts"].at[rows, nxt].add(step),
        }, (nxt, log_probs(logits, nxt, MAX_TOP_LOGPROBS) if with_logprobs else None)

    def _release_fn(self, state, slot):
        state = {
            **state,
            "active": state["active"].at[slot].set(False),
            "positions": state["positions"].at[slot].set(0),
            "temperature": state["temperature"].at[slot].set(0.0),
            "presence": state["presence"].at[slot].set(0.0),  # a free row never takes the penalty path
            "frequency": state["frequency"].at[slot].set(0.0),
        }
        if self.config.paged:  # the slot's pages may go to another request: stop writing through them
            state["table"] = state["table"].at[slot].set(NULL_PAGE)
        return state

    # ---- host API ----

    def init_state(self) -> dict:
        """An empty decode state: zeroed cache (or page pool), every slot inactive."""
        cfg, b = self.config, self.config.slots
        if cfg.paged:
            cache = per_layer(init_paged_cache(self.model.config, cfg.pool_pages, cfg.page_size))
        else:
            cache = per_layer(init_cache(self.model.config, b, cfg.max_length))
        state = {
            "cache": cache,
            "tokens": jnp.zeros((b,), jnp.int32),
            "positions": jnp.zeros((b,), jnp.int32),
            "steps": jnp.zeros((b,), jnp.int32),
            "active": jnp.zeros((b,), bool),
            "temperature": jnp.zeros((b,), jnp.float32),
            "top_k": jnp.zeros((b,), jnp.int32),
            "top_p": jnp.ones((b,), jnp.float32),
            "seeds": jnp.zeros((b,), jnp.uint32),
            "adapter": jnp.zeros((b,), jnp.int32),
            "presence": jnp.zeros((b,), jnp.float32),
            "frequency": jnp.zeros((b,), jnp.float32),
            # generated-token counts per row, for the penalties (reset at insert)
            "counts": jnp.zeros((b, self.model.config.vocab_size), jnp.int32),
        }
        if cfg.paged:
            state["table"] = jnp.full((b, cfg.pages_per_request), NULL_PAGE, jnp.int32)
        return state

    def check_request(self, prompt_len: int, max_tokens: int) -> None:
        """Raises ValueError when a request can never be served by this engine's shapes."""
        if prompt_len < 1:
            raise ValueError("empty prompt: expected at least one token")
        self.config.bucket_for(prompt_len)
        if max_tokens < 1 or prompt_len + max_tokens > self.config.max_length:
            raise ValueError(
                f"prompt of {prompt_len} tokens + max_tokens={max_tokens}: expected max_tokens >= 1 and a "
                f"total of at most {self.config.max_length} (the context length)"
            )

    def prefill(
        self,
        prompt,
        max_tokens: int,
        sampling: SamplingParams = SamplingParams(),
        adapter: int = 0,
        score: bool = False,
    ) -> Prefix:
        """Runs the prompt (token ids) alone, padded to its bucket; samples the first new token. adapter: 0
        for the base, k for the k-th served adapter. score: also the prompt's log-probs (Prefix.
        prompt_logprobs; a second compiled prefill)."""  # fmt: skip
        self.check_request(len(prompt), max_tokens)
        num = 0 if self.adapters is None else AdapterSet.count(self.adapters)
        if not 0 <= adapter <= num:
            raise ValueError(f"adapter={adapter}: this engine serves adapters 1 to {num} (0 = the base)")
        bucket = self.config.bucket_for(len(prompt))
        ids = np.zeros((1, bucket), np.int32)
        ids[0, : len(prompt)] = prompt
        token, cache, logits, first, scored = self._prefill(
            self.params, self.adapters, ids, np.int32(len(prompt)), *sampling.arrays(), np.int32(adapter),
            bool(score),
        )  # fmt: skip
        if scored is not None:
            scored = TokenLogprobs(*(np.asarray(a)[: len(prompt) - 1] for a in scored))
        return Prefix(cache, token, len(prompt), max_tokens, sampling, adapter, logits, first, scored)

    def fork(self, prefix: Prefix, sampling: SamplingParams, max_tokens: int | None = None) -> Prefix:
        """The same prefilled prompt with another first token, sampled with `sampling` (n samples of one
        prompt share one prefill). The prefix's cache is shared, not copied: insert never donates it."""
        token, first = self._first(prefix.logits, *sampling.arrays())
        return dataclasses.replace(
            prefix, first_token=token, first=first, sampling=sampling,
            max_tokens=prefix.max_tokens if max_tokens is None else max_tokens,
        )  # fmt: skip

    def can_insert(self, prompt_len: int, max_tokens: int) -> bool:
        """False while the page pool is too full for this request (back-pressure: wait for releases)."""
        return self.pages is None or self.pages.can_allocate(prompt_len + max_tokens)

    def insert(self, prefix: Prefix, state: dict, slot: int) -> dict:
        """Puts the prefix into `slot` (reserving its pages; OutOfPages when the pool is full)."""
        if self.pages is not None:
            row = self.pages.allocate(slot, prefix.length + prefix.max_tokens)
        else:
            row = np.zeros((1,), np.int32)
        return self._insert(
            state, prefix.cache, np.int32(slot), prefix.first_token, np.int32(prefix.length), row,
            prefix.sampling.arrays() + prefix.sampling.penalty_arrays(), np.int32(prefix.adapter),
        )  # fmt: skip

    def generate(self, state: dict, logprobs: bool = False):
        """One decode step for every slot -> (state, next tokens [B] as numpy; inactive slots give 0), and
        with logprobs a third: their TokenLogprobs ([B] rows)."""
        state, (tokens, lps) = self._generate(self.params, self.adapters, state, bool(logprobs))
        if not logprobs:
            return state, np.asarray(tokens)
        return state, np.asarray(tokens), TokenLogprobs(*(np.asarray(a) for a in lps))

    def release(self, state: dict, slot: int) -> dict:
        """Frees the slot and its pages."""
        if self.pages is not None:
            self.pages.release(slot)
        return self._release(state, np.int32(slot))
