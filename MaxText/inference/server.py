"""The OpenAI-compatible HTTP app over a DecodeSession: one engine thread, many async requests.

Endpoints: POST /v1/completions, POST /v1/chat/completions (stream=true answers Server-Sent Events ending
with `data: [DONE]`), GET /v1/models, GET /health, GET /metrics (Prometheus text), and vLLM's tokenizer
endpoints POST /tokenize, POST /detokenize, GET /tokenizer_info. The request fields, the refused ones and
the log-probs are openai_fields.py's.

Threads: the engine loop runs on one background thread (Batcher.step); HTTP handlers run on the asyncio
loop, submit requests and receive events through call_soon_threadsafe into a per-request asyncio.Queue.
A client that disconnects cancels its request, which frees the slot at the next step. Errors use OpenAI's
body {"error": {"message", "type", "param", "code"}} with a 4xx status; the server keeps serving.
"""

import asyncio
import json
import threading
import time
import traceback
import uuid
from typing import Optional

import fastapi
import prometheus_client as prom
import pydantic
from fastapi.responses import JSONResponse, StreamingResponse

from MaxText.inference import openai_fields as of
from MaxText.inference.batcher import Request
from MaxText.inference.engine import SamplingParams
from MaxText.inference.openai_fields import ApiError, ChatBody, CompletionBody
from MaxText.input_pipeline.chat_template import ChatTemplate
from MaxText.parallel import mesh as mesh_lib


class Metrics:
    """Prometheus metrics on a private registry (so several apps can live in one process)."""

    def __init__(self, batcher):
        self.registry = prom.CollectorRegistry()
        prom.Gauge("maxtext_queue_depth", "Requests waiting for a slot", registry=self.registry).set_function(
            lambda: batcher.queue_depth
        )
        prom.Gauge("maxtext_active_slots", "Requests decoding", registry=self.registry).set_function(
            lambda: batcher.active
        )
        prom.Gauge(
            "maxtext_tokens_per_second", "Generated tokens/s over the last 10 s", registry=self.registry
        ).set_function(batcher.tokens_per_s)
        self.tokens = prom.Counter("maxtext_generated_tokens", "Generated tokens", registry=self.registry)
        self.ttft = prom.Histogram(
            "maxtext_time_to_first_token_seconds",
            "From request arrival to its first token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.requests = prom.Counter(
            "maxtext_requests", "Finished HTTP requests by status code", ["code"], registry=self.registry
        )


class Service:
    """Owns the DecodeSession, the engine thread and the request plumbing."""

    def __init__(self, session, model_id: str, chat_template: ChatTemplate):
        self.session, self.model_id, self.chat = session, model_id, chat_template
        self.cfg, self.batcher = session.cfg, session.batcher
        self.metrics = Metrics(self.batcher)
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _loop(self):
        with mesh_lib.activate(self.session.mesh, self.session.rules):
            while True:
                with self._wake:
                    while self.batcher.idle() and not self._stop:
                        self._wake.wait(timeout=0.5)
                    if self._stop:
                        return
                try:
                    self.batcher.step()
                except Exception:  # pylint: disable=broad-exception-caught
                    # Keep serving: the requests in flight end with finish_reason "error", the next start clean.
                    traceback.print_exc()
                    self.batcher.fail_all("error")

    @property
    def model_ids(self) -> list:
        """What /v1/models lists and a request's `model` may name: the base, then each served adapter."""
        return [self.model_id, *self.session.adapter_names]

    def submit(self, jobs, body, max_tokens: int, logprobs: Optional[int], echo: bool):
        """Queues one request per job (prompt ids, SamplingParams, group); returns (Requests, one asyncio.Queue
        of (choice index, event))."""
        if self.batcher.queue_depth + len(jobs) > self.cfg.max_queue_size:
            raise ApiError(429, f"the queue is full ({self.cfg.max_queue_size} waiting); retry later", None,
                           "rate_limit_error")  # fmt: skip
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        adapter = self.model_ids.index(body.model) if body.model is not None else 0

        def on_event(index):
            return lambda event: loop.call_soon_threadsafe(events.put_nowait, (index, event))

        requests = [
            Request(ids, max_tokens, sampling, stop=stop, ignore_eos=body.ignore_eos, on_event=on_event(i),
                    adapter=adapter, logprobs=logprobs, echo=echo, group=group)
            for i, (ids, sampling, group) in enumerate(jobs)
        ]  # fmt: skip
        try:
            for request in requests:
                self.batcher.submit(request)
        except ValueError as e:
            for request in requests:
                self.batcher.cancel(request)
            raise ApiError(400, str(e)) from None
        with self._wake:
            self._wake.notify()
        return requests, events


def _sampling(body, seed: int) -> SamplingParams:
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None and not -2.0 <= value <= 2.0:
            raise ApiError(400, f"{name}={value}: expected -2 to 2", name)
    try:
        return SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_k=0 if body.top_k is None else body.top_k,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=seed % 2**32,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
        )
    except ValueError as e:
        raise ApiError(400, str(e)) from None


def _check(body, service: Service, prompts, max_tokens: Optional[int], echo: bool):
    """Validates the request against the model -> (max_tokens, jobs [(ids, SamplingParams, group)] in
    choice order: prompt i's n samples are choices i*n .. i*n+n-1). Raises ApiError (4xx)."""
    if body.model is not None and body.model not in service.model_ids:
        served = ", ".join(repr(m) for m in service.model_ids)
        raise ApiError(404, f"model {body.model!r} does not exist; this server serves {served}",
                       "model", "not_found_error")  # fmt: skip
    of.refuse_unsupported(body)
    if not 1 <= body.n <= service.cfg.max_queue_size:
        raise ApiError(400, f"n={body.n}: expected 1 to {service.cfg.max_queue_size} (max_queue_size)", "n")
    config = service.session.engine.config
    longest = min(max(config.buckets), config.max_length - 1)
    vocab = service.session.tokenizer.vocab_size
    for ids in prompts:
        if not ids:
            raise ApiError(400, "the prompt is empty", "prompt")
        if len(ids) > longest:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; this server takes prompts of at most "
                           f"{longest} tokens (context {config.max_length})", "prompt")  # fmt: skip
        if not all(0 <= i < vocab for i in ids):
            raise ApiError(400, f"prompt: token ids must lie in 0 to {vocab - 1}", "prompt")
    low = 0 if echo else 1
    for ids in prompts:
        budget = service.session.max_tokens_for(len(ids)) if max_tokens is None else max_tokens
        if budget < low or len(ids) + max(budget, 1) > config.max_length:
            raise ApiError(400, f"max_tokens={budget}: expected {low} to {config.max_length - len(ids)} "
                           f"(context {config.max_length} minus the prompt's {len(ids)} tokens"
                           f"{'; 0 with echo scores the prompt' if echo else ''})", "max_tokens")  # fmt: skip
    seed = body.seed if body.seed is not None else uuid.uuid4().int % (2**31)
    jobs = []
    for ids in prompts:
        group = uuid.uuid4().int if body.n > 1 else None
        jobs += [(ids, _sampling(body, seed + j), group) for j in range(body.n)]
    return max_tokens, jobs


def _error_response(e: ApiError) -> JSONResponse:
    body = {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.status}}
    return JSONResponse(body, status_code=e.status)


async def _parse(request: fastapi.Request, model_cls):
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"invalid JSON body: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model_cls.model_validate(data)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}", where) from None


class _Choice:
    """One choice's text, tokens and log-probs as its events arrive."""

    def __init__(self, service, kind, index, prompt_text, ids, logprobs, echo):
        self.kind, self.index, self.logprobs, self.echo = kind, index, logprobs, echo
        self.text, self.count, self.reason, self.content = [], 0, None, []
        decode = service.session.tokenizer.decode
        self.pieces = of.Pieces(decode, () if echo else ids)
        self.prompt_ids = ids
        self.prompt_text = prompt_text if prompt_text is not None else decode(ids)
        self.acc = of.CompletionLogprobs(self.pieces) if logprobs is not None else None

    def take(self, event):
        """Records the event; returns its delta (text, logprobs part or None) for a stream chunk."""
        text, part = event.text, None
        if self.echo and event.prompt_logprobs is not None:
            text = self.prompt_text + text
            if self.acc is not None:
                start = len(self.acc.out["tokens"])
                self.acc.add_prompt(self.prompt_ids, event.prompt_logprobs, self.logprobs)
                part = {k: v[start:] for k, v in self.acc.out.items()}
        self.text.append(text)
        self.count += event.token is not None
        self.reason = event.finish_reason or self.reason
        if self.logprobs is not None and event.token is not None and event.logprob is not None:
            if self.kind == "chat":
                entry = of.chat_logprob(self.pieces, event)
                self.content.append(entry)
                part = {"content": [entry], "refusal": None}
            else:
                added = self.acc.add(event.token, event.logprob, event.top_logprobs)
                part = added if part is None else {k: part[k] + added[k] for k in part}
        return text, part

    def final(self) -> dict:
        """The choice of a non-streamed answer."""
        text = "".join(self.text)
        if self.kind == "chat":
            logprobs = {"content": self.content, "refusal": None} if self.logprobs is not None else None
            message = {"role": "assistant", "content": text}
            return {
                "index": self.index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": self.reason,
            }
        logprobs = self.acc.out if self.acc is not None else None
        return {"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": self.reason}

    def chunk(self, text, part, reason) -> dict:
        if self.kind == "chat":
            return {"index": self.index, "delta": {"content": text} if text else {}, "logprobs": part,
                    "finish_reason": reason}  # fmt: skip
        return {"index": self.index, "text": text, "logprobs": part, "finish_reason": reason}


async def _serve(service: Service, http_request, body, prompts, max_tokens, kind: str):
    """prompts: [(text or None, ids)]; answers one choice per prompt and sample."""
    echo = kind == "text" and body.echo
    if kind == "chat":
        of.check_logprobs(body.top_logprobs, "top_logprobs")
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs: needs logprobs=true", "top_logprobs")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
    else:
        of.check_logprobs(body.logprobs, "logprobs")
        logprobs = body.logprobs
    max_tokens, jobs = _check(body, service, [ids for _, ids in prompts], max_tokens, echo)
    if max_tokens is None:
        max_tokens = service.session.max_tokens_for(max(len(ids) for _, ids in prompts))
    requests, events = service.submit(jobs, body, max_tokens, logprobs, echo)
    arrived = time.perf_counter()
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
    created, model = int(time.time()), body.model or service.model_id
    choices = [
        _Choice(service, kind, i, *prompts[i // body.n], logprobs, echo) for i in range(len(jobs))
    ]  # fmt: skip
    header = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
              "created": created, "model": model}  # fmt: skip
    prompt_tokens = sum(len(ids) for _, ids in prompts)

    async def events_until_done():
        first, left = True, len(requests)
        try:
            while left:
                index, event = await events.get()
                if event.token is not None:
                    service.metrics.tokens.inc()
                    if first:
                        service.metrics.ttft.observe(time.perf_counter() - arrived)
                        first = False
                left -= event.finished
                yield index, event
        finally:  # the client went away (task cancelled) or the requests finished: free the slots either way
            for request in requests:
                service.batcher.cancel(request)

    if body.stream:
        extra = {"usage": None} if body.include_usage else {}

        async def sse():
            if kind == "chat":  # OpenAI opens a chat stream with the role
                for choice in choices:
                    opening = {"index": choice.index, "delta": {"role": "assistant", "content": ""},
                               "logprobs": None, "finish_reason": None}  # fmt: skip
                    yield f"data: {json.dumps({**header, 'choices': [opening], **extra})}\n\n"
            async for index, event in events_until_done():
                text, part = choices[index].take(event)
                if text or part or event.finished:
                    chunk = {
                        **header,
                        "choices": [choices[index].chunk(text, part, event.finish_reason)],
                        **extra,
                    }
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            if body.include_usage:
                done = of.usage(prompt_tokens, sum(c.count for c in choices))
                yield f"data: {json.dumps({**header, 'choices': [], 'usage': done})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async for index, event in events_until_done():
        choices[index].take(event)
        if await http_request.is_disconnected():
            break
    return {
        **header,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "choices": [c.final() for c in choices],
        "usage": of.usage(prompt_tokens, sum(c.count for c in choices)),
    }


def _tokenizer_routes(app, service: Service):
    """vLLM's /tokenize, /detokenize and /tokenizer_info, by the server's own prompt rule and template."""
    tok = service.session.tokenizer

    @app.post("/tokenize")
    async def tokenize(request: fastapi.Request):
        body = await _parse(request, of.TokenizeBody)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "expected one of prompt or messages", "prompt")
        text = body.prompt
        if body.messages is not None:
            try:
                text = service.chat.render([m.model_dump() for m in body.messages])
            except ValueError as e:
                raise ApiError(400, str(e), "messages") from None
        ids = tok.encode(text) if body.add_special_tokens else tok.encode(text, add_bos=False)
        return {"count": len(ids), "max_model_len": service.cfg.max_target_length, "tokens": ids,
                "token_strs": None}  # fmt: skip

    @app.post("/detokenize")
    async def detokenize(request: fastapi.Request):
        body = await _parse(request, of.DetokenizeBody)
        if not all(0 <= i < tok.vocab_size for i in body.tokens):
            raise ApiError(400, f"tokens: ids must lie in 0 to {tok.vocab_size - 1}", "tokens")
        return {"prompt": tok.decode(body.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {
            "tokenizer_class": type(tok.raw).__name__,
            "tokenizer_path": service.cfg.tokenizer_path,
            "vocab_size": tok.vocab_size,
            "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id,
            "pad_token_id": tok.pad_id,
            "add_bos_token": tok.add_bos,
            "add_eos_token": tok.add_eos,
            "model_max_length": service.cfg.max_target_length,
        }


def make_app(service: Service) -> fastapi.FastAPI:
    """The FastAPI app; its lifespan starts and stops the engine thread."""

    async def lifespan(_):
        service.start()
        yield
        service.stop()

    app = fastapi.FastAPI(title="MaxText", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return _error_response(e)

    @app.middleware("http")
    async def auth_and_count(request: fastapi.Request, call_next):
        key = service.cfg.api_key
        if key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {key}":
                response = _error_response(ApiError(401, "missing or wrong API key (Authorization: Bearer ...)",
                                                    None, "authentication_error"))  # fmt: skip
                service.metrics.requests.labels(code="401").inc()
                return response
        response = await call_next(request)
        service.metrics.requests.labels(code=str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.model_id, "active": service.batcher.active,
                "queued": service.batcher.queue_depth}  # fmt: skip

    @app.get("/metrics")
    async def metrics():
        return fastapi.Response(
            prom.generate_latest(service.metrics.registry), media_type=prom.CONTENT_TYPE_LATEST
        )

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "maxtext",
                                            **({"parent": service.model_id} if m != service.model_id else {})}
                                           for m in service.model_ids]}  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: fastapi.Request):
        body = await _parse(request, CompletionBody)
        prompts = of.completion_prompts(body, service.session.encode_prompt)
        return await _serve(service, request, body, prompts, body.max_tokens, "text")

    @app.post("/v1/chat/completions")
    async def chat(request: fastapi.Request):
        body = await _parse(request, ChatBody)
        if not body.messages:
            raise ApiError(400, "messages: expected at least one message", "messages")
        try:
            text = service.chat.render([m.model_dump() for m in body.messages])
        except ValueError as e:
            raise ApiError(400, str(e), "messages") from None
        ids = service.session.encode_prompt(text)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await _serve(service, request, body, [(text, ids)], max_tokens, "chat")

    _tokenizer_routes(app, service)

    return app
