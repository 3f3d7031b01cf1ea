"""Engine and continuous batching: requests joining and leaving a fixed-shape decode batch get exactly the
tokens they get alone (greedy and sampled, contiguous and paged), greedy equals the full forward pass, stop
conditions end requests, and streamed text never splits a character or shows a partial stop string."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText.inference.batcher import Batcher, Request
from MaxText.inference.engine import Engine, EngineConfig, request_keys
from MaxText.inference.sampling import sample_rows
from MaxText.tests.helpers import ENGINE_MAX_TOKENS, ENGINE_PROMPTS, ENGINE_SAMPLING, greedy_reference
from MaxText.tests.helpers import serve_requests, tiny_model


@pytest.fixture(scope="module", name="tiny")
def _tiny():
    return tiny_model("base_num_decoder_layers=2")


@pytest.fixture(scope="module", name="engines")
def _engines(tiny):
    """One contiguous and one paged engine (3 slots, 24 tokens per request), shared to compile once."""
    _, model, params = tiny
    return {
        paged: Engine(model, params, EngineConfig(3, 24, (8, 16), paged=paged, page_size=4))
        for paged in (False, True)
    }


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_tokens_do_not_depend_on_neighbours(engines, paged):
    engine = engines[paged]
    batcher = Batcher(engine, eos_id=-1)
    alone = {}
    for i in range(len(ENGINE_PROMPTS)):
        alone.update(serve_requests(batcher, [i]))
    assert [len(alone[i]) for i in range(len(ENGINE_PROMPTS))] == ENGINE_MAX_TOKENS
    together = serve_requests(batcher, [0, 1, 2], late=[3, 4])  # 5 requests, 3 slots: joins and leaves
    assert together == alone
    if paged:
        assert engine.pages.free_pages == engine.config.pool_pages - 1  # everything released


def test_greedy_equals_repeated_forward_and_contiguous_equals_paged(tiny, engines):
    _, model, params = tiny
    results = [serve_requests(Batcher(engines[paged], eos_id=-1), [0, 3]) for paged in (False, True)]
    assert results[0] == results[1]
    for i in (0, 3):
        assert results[0][i] == greedy_reference(model, params, ENGINE_PROMPTS[i], ENGINE_MAX_TOKENS[i])


def test_full_page_pool_applies_back_pressure(engines):
    engine = engines[True]
    batcher = Batcher(engine, eos_id=-1)
    alone = serve_requests(batcher, [2])
    # Leave room for one request of 3 + 9 tokens (3 pages) at a time although there are 3 slots.
    hogs = [f"hog{i}" for i in range(3)]
    for hog in hogs:
        engine.pages.allocate(hog, min(engine.pages.free_pages - 3, 6) * engine.config.page_size)
    assert engine.pages.free_pages == 3
    batcher.submit(Request(ENGINE_PROMPTS[2], ENGINE_MAX_TOKENS[2], ENGINE_SAMPLING[2], ignore_eos=True))
    batcher.submit(Request(ENGINE_PROMPTS[0], 5, ignore_eos=True))
    batcher.step()
    assert batcher.active == 1 and batcher.queue_depth == 1 and engine.pages.free_pages == 0
    batcher.run_until_idle()
    assert serve_requests(batcher, [2]) == alone
    with pytest.raises(ValueError, match="at most 24"):
        batcher.submit(Request(ENGINE_PROMPTS[1], 15))
    for hog in hogs:
        engine.pages.release(hog)


def test_eos_max_tokens_and_stop_strings(engines):
    engine = engines[False]
    probe = serve_requests(Batcher(engine, eos_id=-1), [2])[2]
    eos = probe[4]
    events = []
    batcher = Batcher(engine, eos_id=eos)
    batcher.submit(Request(ENGINE_PROMPTS[2], 9, ENGINE_SAMPLING[2], on_event=events.append))
    batcher.run_until_idle()
    cut = probe.index(eos)
    assert [e.token for e in events] == probe[:cut] + [None] and events[-1].finish_reason == "stop"

    def decode(ids):  # token t -> letter, so stop strings are easy to place
        return "".join(chr(ord("a") + t % 26) for t in ids)

    text = decode(probe)
    stop = text[3:5]
    events = []
    batcher = Batcher(engine, eos_id=-1, decode=decode)
    batcher.submit(
        Request(
            ENGINE_PROMPTS[2], 9, ENGINE_SAMPLING[2], stop=(stop, "never-appears"), on_event=events.append
        )
    )
    batcher.run_until_idle()
    streamed = "".join(e.text for e in events)
    assert streamed == text[: text.find(stop)] and events[-1].finish_reason == "stop"
    assert stop[0] not in "".join(e.text for e in events[:-1])[text.find(stop) :]


class _ScriptedEngine:
    """An Engine stand-in that emits a fixed script of tokens, for the text-streaming rules."""

    def __init__(self, script):
        self.config = EngineConfig(slots=1, max_length=64, buckets=(8,))
        self.script = list(script)
        self.pages = None

    def init_state(self):
        return None

    def check_request(self, prompt_len, max_tokens):
        del prompt_len, max_tokens

    def can_insert(self, prompt_len, max_tokens):
        del prompt_len, max_tokens
        return True

    def prefill(self, prompt, max_tokens, sampling, adapter=0):
        del prompt, max_tokens, sampling, adapter
        return type("P", (), {"first_token": self.script.pop(0), "prompt_logprobs": None})()

    def insert(self, prefix, state, slot):
        del prefix, slot
        return state

    def generate(self, state):
        return state, np.asarray([self.script.pop(0)])

    def release(self, state, slot):
        del slot
        return state


def test_streaming_never_splits_characters_or_shows_partial_stops():
    text = "héllo → wörld ok"
    data = text.encode()
    script = list(data)

    def decode(ids):  # one token per byte, like a byte-fallback tokenizer
        return bytes(ids).decode("utf-8", errors="replace")

    events = []
    batcher = Batcher(_ScriptedEngine(script), eos_id=-1, decode=decode)
    batcher.submit(Request([1], len(script), on_event=events.append))
    batcher.run_until_idle()
    assert "".join(e.text for e in events) == text
    assert all("\ufffd" not in e.text for e in events)
    assert events[-1].finish_reason == "length"
    events = []
    batcher = Batcher(_ScriptedEngine(script), eos_id=-1, decode=decode)
    batcher.submit(Request([1], len(script), stop=("wörld",), on_event=events.append))
    batcher.run_until_idle()
    shown = [e.text for e in events]
    assert "".join(shown) == "héllo → " and events[-1].finish_reason == "stop"
    assert not any("".join(shown[: i + 1]).endswith("w") for i in range(len(shown)))


def test_engine_failure_ends_requests_with_error():
    events = []
    batcher = Batcher(_ScriptedEngine([5, 6]), eos_id=-1)  # the script runs out at the second step
    batcher.submit(Request([1], 5, on_event=events.append))
    batcher.submit(Request([1], 5, on_event=events.append))
    with pytest.raises(IndexError):
        batcher.run_until_idle()
    batcher.fail_all()
    assert [e.finish_reason for e in events] == [None, None, "error", "error"] and batcher.idle()


def test_sample_rows_applies_each_rows_own_settings():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4))
    settings = [(0.0, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.7), (1.0, 0, 1.0)]  # greedy, top-2, top-p .7, all
    temperature, top_k, top_p = (jnp.asarray(x) for x in zip(*settings))
    seeds = jnp.arange(4, dtype=jnp.uint32)

    def draw(step, rows=slice(None)):
        keys = request_keys(seeds[rows], jnp.full((4,), step)[rows])
        return sample_rows(logits[rows], keys, temperature[rows], top_k[rows], top_p[rows])

    draws = np.asarray(jax.jit(jax.vmap(draw))(jnp.arange(3000)))
    assert set(draws[:, 0]) == {0}
    assert set(draws[:, 1]) == {0, 1} and set(draws[:, 2]) == {0, 1}
    np.testing.assert_allclose(
        np.bincount(draws[:, 3], minlength=4) / 3000, [0.5, 0.3, 0.15, 0.05], atol=0.03
    )
    assert int(draw(7, slice(1, 2))[0]) == int(draw(7)[1])  # a row's draw does not depend on its neighbours
