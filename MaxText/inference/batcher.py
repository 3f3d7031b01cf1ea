"""Continuous batching over an Engine: a request queue, slot assignment, stop conditions and streaming text.

`Batcher.step()` admits waiting requests into free slots (while the page pool has room: back-pressure, not
failure), runs one decode step for all active slots, and hands each request its new token and text delta
through its `on_event` callback. Requests stop at EOS, at max_tokens or at a stop string, and free their slot
and pages at once. `submit` and `cancel` may be called from other threads; `step` runs on one thread.
`complete(requests)` runs a set of requests to the end and returns their tokens (api.generate and
DecodeSession.generate_text; the server steps the batcher itself).

Log-probs (Request.logprobs, echo): the decode step that returns them runs only while an active request asks
for them. Requests with the same `group` admitted one after another share one prefill (n samples of one
prompt): the later ones fork the held prefix with their own sampling. A request with max_tokens 0 (echo)
is scored by a prefill and ends without taking a slot.

Text deltas never split a multi-byte character (a decoded suffix ending in U+FFFD waits for its remaining
bytes) and never show a partial stop string (text that could still become a stop string is held back).
"""

import collections
import dataclasses
import itertools
import threading
import time
from typing import Callable, Optional

from MaxText.inference.engine import Engine, Prefix, SamplingParams, TokenLogprobs

REPLACEMENT = "\ufffd"


@dataclasses.dataclass(frozen=True)
class Event:
    """One update for a request: a new token (None when it finished without one), the text it adds."""

    token: Optional[int]
    text: str
    finish_reason: Optional[str] = None  # "stop" (EOS or stop string) or "length" (max_tokens)
    logprob: Optional[float] = None  # of token, when the request asked for logprobs
    top_logprobs: tuple = ()  # ((id, logprob), ...) the request's `logprobs` largest, descending
    prompt_logprobs: Optional[TokenLogprobs] = None  # on a request's first event when it asked for echo

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclasses.dataclass
class Request:
    """A generation request; on_event is called (from the batcher's thread) with each Event."""

    prompt: list
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop: tuple = ()
    ignore_eos: bool = False
    on_event: Callable = lambda event: None
    adapter: int = 0  # the served LoRA adapter this request runs with (0: the base; inference/adapters.py)
    logprobs: Optional[int] = None  # None: none; k: each token's logprob and the k largest (<= 20)
    echo: bool = False  # score the prompt: its log-probs come with the first event
    group: Optional[int] = None  # requests of one group (same prompt and adapter) share one prefill
    request_id: int = dataclasses.field(default_factory=itertools.count().__next__)


@dataclasses.dataclass
class Completion:
    """What a request produced: its tokens (EOS not included), why it ended, seconds to its first token
    (from the start of Batcher.complete; None when it ended without a token)."""

    tokens: list = dataclasses.field(default_factory=list)
    finish_reason: Optional[str] = None
    first_token_s: Optional[float] = None


@dataclasses.dataclass
class _Live:
    request: Request
    submitted: float
    ids: list = dataclasses.field(default_factory=list)
    emitted: int = 0  # characters of text already sent
    prompt_logprobs: Optional[TokenLogprobs] = None  # sent with the first event, then dropped


def _held_back(text: str, stops) -> int:
    """Characters at the end of text that must wait: an incomplete character, or a possible stop prefix."""
    whole = text.rstrip(REPLACEMENT)
    partial = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(whole)), 0, -1):
            if whole.endswith(stop[:n]):
                partial = max(partial, n)
                break
    return len(text) - len(whole) + partial


class Batcher:
    """Drives an Engine with continuous batching. decode(ids) -> str enables text and stop strings."""

    def __init__(self, engine: Engine, eos_id: int, decode: Optional[Callable] = None):
        self.engine, self.eos_id, self.decode = engine, eos_id, decode
        self.state = engine.init_state()
        self.slots = [None] * engine.config.slots
        self._waiting = collections.deque()
        self._cancelled = set()
        self._lock = threading.Lock()
        self.generated_tokens = 0
        self.first_token_s = collections.deque(maxlen=1000)  # time to first token of recent requests
        self.recent_tokens = collections.deque()  # (time, tokens) of recent steps, for tokens/s
        self._held = None  # (group, Prefix): the last group's prefill, for its later requests

    # ---- thread-safe ----

    def submit(self, request: Request) -> Request:
        """Queues a request (ValueError at once if it can never fit the engine's shapes)."""
        self._check(request)
        with self._lock:
            self._waiting.append(_Live(request, time.perf_counter()))
        return request

    def cancel(self, request: Request) -> None:
        """Drops a queued request or frees a running one's slot at the next step (client went away)."""
        with self._lock:
            self._cancelled.add(request.request_id)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return sum(s is not None for s in self.slots)

    def idle(self) -> bool:
        return not self._waiting and not self.active

    def tokens_per_s(self, window: float = 10.0) -> float:
        now = time.perf_counter()
        while self.recent_tokens and self.recent_tokens[0][0] < now - window:
            self.recent_tokens.popleft()
        return sum(n for _, n in self.recent_tokens) / window

    # ---- the batcher thread ----

    def step(self) -> None:
        """Admits what fits, then one decode step for every active slot."""
        self._drop_cancelled()
        self._admit()
        if not self.active:
            return
        if any(s is not None and s.request.logprobs is not None for s in self.slots):
            self.state, tokens, lps = self.engine.generate(self.state, logprobs=True)
        else:
            (self.state, tokens), lps = self.engine.generate(self.state), None
        n = 0
        for slot, live in enumerate(self.slots):
            if live is not None:
                n += 1
                row = None if lps is None else (lps.chosen[slot], lps.top_ids[slot], lps.top[slot])
                self._accept(slot, live, int(tokens[slot]), row)
        self.generated_tokens += n
        self.recent_tokens.append((time.perf_counter(), n))

    def warmup(self) -> None:
        """Compiles prefill and insert for every bucket, the decode step and release, on an idle batcher
        (slot 0 is used and released again; its cache row is left with garbage nobody reads)."""
        assert self.idle(), "warm up before serving requests"
        cfg = self.engine.config
        for bucket in sorted(cfg.buckets):
            length = min(bucket, cfg.max_length - 1)
            prefix = self.engine.prefill([0] * length, 1)
            self.state = self.engine.insert(prefix, self.state, 0)
            self.state, _ = self.engine.generate(self.state)
            self.state = self.engine.release(self.state, 0)

    def fail_all(self, reason: str = "error") -> None:
        """Ends every running and waiting request with finish_reason `reason` (after an engine failure),
        so no client waits forever; the batcher starts over from a fresh state."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
        live = [s for s in self.slots if s is not None] + waiting
        self.slots = [None] * len(self.slots)
        if self.engine.pages is not None:
            for slot in range(len(self.slots)):
                self.engine.pages.release(slot)
        self.state, self._held = self.engine.init_state(), None
        for item in live:
            item.request.on_event(Event(None, "", reason))

    def run_until_idle(self) -> None:
        while not self.idle():
            self.step()

    def complete(self, requests) -> list:
        """Submits `requests`, steps until the batcher is idle and returns one Completion per request, in
        order. Each request's own on_event still sees every event. Runs on the batcher's thread. Raises
        ValueError, before submitting any, when one of them can never fit the engine's shapes."""
        for request in requests:
            self._check(request)
        start = time.perf_counter()
        done = [Completion() for _ in requests]

        def recorder(completion: Completion, inner: Callable):
            def on_event(event: Event):
                if event.token is not None:
                    if completion.first_token_s is None:
                        completion.first_token_s = time.perf_counter() - start
                    completion.tokens.append(event.token)
                if event.finished:
                    completion.finish_reason = event.finish_reason
                inner(event)

            return on_event

        for request, completion in zip(requests, done):
            self.submit(dataclasses.replace(request, on_event=recorder(completion, request.on_event)))
        self.run_until_idle()
        return done

    def _drop_cancelled(self):
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            self._waiting = collections.deque(
                w for w in self._waiting if w.request.request_id not in cancelled
            )
        for slot, live in enumerate(self.slots):
            if live is not None and live.request.request_id in cancelled:
                self._free(slot)

    def _admit(self):
        slot = 0
        while slot < len(self.slots):
            if self.slots[slot] is not None:
                slot += 1
                continue
            with self._lock:
                if not self._waiting:
                    return
                live = self._waiting[0]
                req = live.request
                if not self.engine.can_insert(len(req.prompt), req.max_tokens):
                    return  # back-pressure: wait for running requests to release pages (FIFO order)
                self._waiting.popleft()
            prefix = self._prefix(req)
            live.prompt_logprobs = prefix.prompt_logprobs
            self.first_token_s.append(time.perf_counter() - live.submitted)
            if req.max_tokens == 0:  # scored only (echo): no token, no slot
                req.on_event(Event(None, "", "length", prompt_logprobs=prefix.prompt_logprobs))
                continue
            self.state = self.engine.insert(prefix, self.state, slot)
            self.slots[slot] = live
            self.generated_tokens += 1
            first = prefix.first_logprobs() if req.logprobs is not None else None
            row = None if first is None else (first.chosen[0], first.top_ids[0], first.top[0])
            self._accept(slot, live, int(prefix.first_token), row)

    def _check(self, request: Request) -> None:
        if request.max_tokens == 0 and not request.echo:
            raise ValueError("max_tokens=0: expected at least 1 (0 only scores the prompt, with echo)")
        self.engine.check_request(len(request.prompt), max(request.max_tokens, 1))

    def _prefix(self, req: Request) -> Prefix:
        """The request's prefill, or a fork of its group's held one (same prompt, same adapter)."""
        held = self._held
        if req.group is not None and held is not None and held[0] == req.group:
            prefix = held[1]
            if prefix.prompt_logprobs is not None or not req.echo:
                return self.engine.fork(prefix, req.sampling, max(req.max_tokens, 1))
        scored = {"score": True} if req.echo else {}
        prefix = self.engine.prefill(req.prompt, max(req.max_tokens, 1), req.sampling, req.adapter, **scored)
        self._held = (req.group, prefix) if req.group is not None else None
        return prefix

    def _free(self, slot):
        self.state = self.engine.release(self.state, slot)
        self.slots[slot] = None

    def _accept(self, slot: int, live: _Live, token: int, lp=None) -> None:
        """lp: None, or this token's (logprob, top ids [20], top logprobs [20]) when the request asked."""
        req = live.request
        extra = {}
        if live.prompt_logprobs is not None:
            extra["prompt_logprobs"], live.prompt_logprobs = live.prompt_logprobs, None
        if token == self.eos_id and not req.ignore_eos:
            self._finish(slot, live, Event(None, self._flush(live), "stop", **extra))
            return
        if lp is not None and req.logprobs is not None:
            k = req.logprobs
            extra["logprob"] = float(lp[0])
            extra["top_logprobs"] = tuple(zip((int(i) for i in lp[1][:k]), (float(v) for v in lp[2][:k])))
        live.ids.append(token)
        reason = "length" if len(live.ids) >= req.max_tokens else None
        text = ""
        if self.decode is not None:
            full = self.decode(live.ids)
            hits = [full.find(s, max(0, live.emitted - len(s))) for s in req.stop]
            hits = [h for h in hits if h >= 0]
            if hits:
                full, reason = full[: min(hits)], "stop"
            end = len(full) if reason else len(full) - _held_back(full, req.stop)
            text, live.emitted = full[live.emitted : end], max(live.emitted, end)
        event = Event(token, text, reason, **extra)
        if reason:
            self._finish(slot, live, event)
        else:
            req.on_event(event)

    def _flush(self, live: _Live) -> str:
        """The text still held back when a request ends."""
        if self.decode is None:
            return ""
        return self.decode(live.ids)[live.emitted :]

    def _finish(self, slot, live, event):
        self._free(slot)
        live.request.on_event(event)
