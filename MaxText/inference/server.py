"""The OpenAI-compatible HTTP app over a DecodeSession: one engine thread, many async requests.

Endpoints: POST /v1/completions, POST /v1/chat/completions (stream=true answers Server-Sent Events ending
with `data: [DONE]`), GET /v1/models, GET /health, GET /metrics (Prometheus text).

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
from typing import List, Optional, Union

import fastapi
import prometheus_client as prom
import pydantic
from fastapi.responses import JSONResponse, StreamingResponse

from MaxText.inference.batcher import Request
from MaxText.inference.engine import SamplingParams
from MaxText.input_pipeline.chat_template import ChatTemplate
from MaxText.parallel import mesh as mesh_lib


class ApiError(Exception):
    """An error answered as JSON with `status` (OpenAI's error shape)."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class _Common(pydantic.BaseModel):
    """Fields shared by both endpoints. Strict types (no "5" for 5); unknown fields are ignored."""

    model_config = pydantic.ConfigDict(strict=True, extra="ignore")

    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    seed: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    stream: bool = False
    n: int = 1
    ignore_eos: bool = False


class CompletionBody(_Common):
    prompt: Union[str, List[str]]


class Message(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="ignore")
    role: str
    content: str


class ChatBody(_Common):
    max_completion_tokens: Optional[int] = None
    messages: List[Message]


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

    def submit(self, prompt_ids, body: "_Common", max_tokens: int, sampling: SamplingParams):
        """Queues a request; returns (Request, asyncio.Queue of events)."""
        if self.batcher.queue_depth >= self.cfg.max_queue_size:
            raise ApiError(429, f"the queue is full ({self.cfg.max_queue_size} waiting); retry later", None,
                           "rate_limit_error")  # fmt: skip
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        adapter = self.model_ids.index(body.model) if body.model is not None else 0
        request = Request(
            prompt_ids, max_tokens, sampling, stop=stop, ignore_eos=body.ignore_eos,
            on_event=lambda event: loop.call_soon_threadsafe(events.put_nowait, event), adapter=adapter,
        )  # fmt: skip
        self.batcher.submit(request)
        with self._wake:
            self._wake.notify()
        return request, events


def _check(body: _Common, service: Service, prompt_ids, max_tokens: Optional[int]):
    """Validates the request against the model -> (max_tokens, SamplingParams). Raises ApiError (4xx)."""
    if body.model is not None and body.model not in service.model_ids:
        served = ", ".join(repr(m) for m in service.model_ids)
        raise ApiError(404, f"model {body.model!r} does not exist; this server serves {served}",
                       "model", "not_found_error")  # fmt: skip
    if body.n != 1:
        raise ApiError(400, f"n={body.n}: only n=1 is supported", "n")
    config = service.session.engine.config
    longest = min(max(config.buckets), config.max_length - 1)
    if not prompt_ids:
        raise ApiError(400, "the prompt is empty", "prompt")
    if len(prompt_ids) > longest:
        raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens; this server takes prompts of at most "
                       f"{longest} tokens (context {config.max_length})", "prompt")  # fmt: skip
    if max_tokens is None:
        max_tokens = service.session.max_tokens_for(len(prompt_ids))
    if max_tokens < 1 or len(prompt_ids) + max_tokens > config.max_length:
        raise ApiError(400, f"max_tokens={max_tokens}: expected 1 to {config.max_length - len(prompt_ids)} "
                       f"(context {config.max_length} minus the prompt's {len(prompt_ids)} tokens)",
                       "max_tokens")  # fmt: skip
    try:
        sampling = SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_k=0 if body.top_k is None else body.top_k,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed if body.seed is not None else uuid.uuid4().int % (2**31),
        )
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    return max_tokens, sampling


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


def _chunk(kind: str, rid: str, model: str, created: int, text: str, reason):
    if kind == "chat":
        choice = {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}


async def _serve(service: Service, http_request, body: _Common, prompt_ids, max_tokens, kind: str):
    max_tokens, sampling = _check(body, service, prompt_ids, max_tokens)
    try:
        request, events = service.submit(prompt_ids, body, max_tokens, sampling)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    arrived = time.perf_counter()
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())

    async def events_until_done():
        first = True
        try:
            while True:
                event = await events.get()
                if event.token is not None:
                    service.metrics.tokens.inc()
                    if first:
                        service.metrics.ttft.observe(time.perf_counter() - arrived)
                        first = False
                yield event
                if event.finished:
                    return
        finally:  # the client went away (task cancelled) or the request finished: free the slot either way
            service.batcher.cancel(request)

    if body.stream:

        async def sse():
            if kind == "chat":  # OpenAI opens a chat stream with the role
                opening = _chunk(kind, rid, body.model or service.model_id, created, "", None)
                opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield f"data: {json.dumps(opening)}\n\n"
            async for event in events_until_done():
                if event.text or event.finished:
                    chunk = _chunk(
                        kind, rid, body.model or service.model_id, created, event.text, event.finish_reason
                    )
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    text, count, reason = [], 0, None
    async for event in events_until_done():
        text.append(event.text)
        count += event.token is not None
        reason = event.finish_reason
        if await http_request.is_disconnected():
            break
    content = "".join(text)
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": reason}
    else:
        choice = {"index": 0, "text": content, "finish_reason": reason, "logprobs": None}
    return {
        "id": rid,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": body.model or service.model_id,
        "choices": [choice],
        "usage": {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": count,
            "total_tokens": len(prompt_ids) + count,
        },
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
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, f"prompt: expected one prompt, got {len(prompts)}", "prompt")
        ids = service.session.encode_prompt(prompts[0])
        return await _serve(service, request, body, ids, body.max_tokens, "text")

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
        return await _serve(service, request, body, ids, max_tokens, "chat")

    return app
