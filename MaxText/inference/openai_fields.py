"""The OpenAI request bodies the server accepts, the fields it refuses, and the log-probs it answers with.

Bodies are strict (no "5" for 5); fields outside the OpenAI API are ignored; fields of the OpenAI API that
this server does not implement are refused with a 400 naming the field when set to anything but their
no-op value (REFUSED). Log-probs are of the model's raw distribution: log_softmax of the logits before
penalties, temperature, top-k and top-p (vLLM's default), float32, computed on device by the engine.

Token strings (logprobs.tokens, content[].token) are the text a token adds after the (up to 8) tokens
before it, so that they join into the decoded text; text_offset is each token's start in the choice's text.
"""

from typing import Any, List, Optional, Union

import pydantic

from MaxText.inference.engine import MAX_TOP_LOGPROBS


class ApiError(Exception):
    """An error answered as JSON with `status` (OpenAI's error shape)."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class StreamOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class _Common(pydantic.BaseModel):
    """Fields shared by both endpoints. Strict types (no "5" for 5); unknown fields are ignored."""

    model_config = pydantic.ConfigDict(strict=True, extra="allow")

    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    seed: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    ignore_eos: bool = False

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionBody(_Common):
    prompt: Union[str, List[str], List[int], List[List[int]]]
    logprobs: Optional[int] = None
    echo: bool = False


class Message(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="ignore")
    role: str
    content: str


class ChatBody(_Common):
    max_completion_tokens: Optional[int] = None
    messages: List[Message]
    logprobs: bool = False
    top_logprobs: Optional[int] = None


class TokenizeBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="ignore")
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[List[Message]] = None
    add_special_tokens: bool = True


class DetokenizeBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="ignore")
    model: Optional[str] = None
    tokens: List[int]


def _empty(v) -> bool:
    return v is None or v in ({}, [], "")


# OpenAI fields we do not implement -> the values that mean "not used" (accepted and ignored).
REFUSED = {
    "logit_bias": _empty,
    "suffix": _empty,
    "best_of": lambda v: v in (None, 1),
    "tools": _empty,
    "tool_choice": lambda v: v in (None, "none"),
    "functions": _empty,
    "function_call": lambda v: v in (None, "none"),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "audio": _empty,
    "modalities": lambda v: v in (None, ["text"]),
    "prediction": _empty,
    "web_search_options": _empty,
    "reasoning_effort": _empty,
    "verbosity": _empty,
    "store": lambda v: v in (None, False),
}
# Accepted and ignored: user, metadata, service_tier, parallel_tool_calls, prompt_cache_key,
# safety_identifier (bookkeeping, or meaningless without the refused fields above).


def refuse_unsupported(body: pydantic.BaseModel) -> None:
    """400 naming the first OpenAI field set that this server does not implement."""
    extra = body.model_extra or {}
    for name, unused in REFUSED.items():
        if name in extra and not unused(extra[name]):
            raise ApiError(400, f"{name}={extra[name]!r}: not supported by this server", name)


def check_logprobs(k: Optional[int], field: str) -> None:
    if k is not None and not 0 <= k <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"{field}={k}: expected 0 to {MAX_TOP_LOGPROBS}", field)


def completion_prompts(body: CompletionBody, encode) -> list:
    """[(prompt text or None, ids)] of the four prompt forms: str, [str], [int], [[int]]."""
    p = body.prompt
    if isinstance(p, str):
        return [(p, encode(p))]
    if not p:
        raise ApiError(400, "prompt: expected a string, strings, token ids or lists of token ids", "prompt")
    if all(isinstance(x, str) for x in p):
        return [(x, encode(x)) for x in p]
    if all(isinstance(x, int) for x in p):
        return [(None, list(p))]
    if all(isinstance(x, list) for x in p):
        return [(None, list(x)) for x in p]
    raise ApiError(400, "prompt: a list must hold only strings, only token ids or only lists", "prompt")


class Pieces:
    """Token strings by the rule above, over one choice's context (prompt ids, then generated ids)."""

    WINDOW = 8

    def __init__(self, decode, context=()):
        self.decode, self.context = decode, list(context)

    def of(self, token: int, context=None) -> str:
        ctx = (self.context if context is None else context)[-self.WINDOW :]
        return self.decode(ctx + [token])[len(self.decode(ctx)) :] if ctx else self.decode([token])

    def take(self, token: int) -> str:
        piece = self.of(token)
        self.context.append(token)
        return piece


class CompletionLogprobs:
    """Accumulates choices[].logprobs = {tokens, token_logprobs, top_logprobs, text_offset} (completions)."""

    def __init__(self, pieces: Pieces, offset: int = 0):
        self.pieces, self.offset = pieces, offset
        self.out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, token: int, logprob: Optional[float], top) -> dict:
        """Appends one token (logprob None: the first prompt token); returns the part it added."""
        before = list(self.pieces.context)
        piece = self.pieces.take(token)
        tops = None if logprob is None else {self.pieces.of(i, before): lp for i, lp in top}
        part = {"tokens": [piece], "token_logprobs": [logprob], "top_logprobs": [tops],
                "text_offset": [self.offset]}  # fmt: skip
        self.offset += len(piece)
        for key, value in part.items():
            self.out[key].extend(value)
        return part

    def add_prompt(self, ids, scored, k: int) -> None:
        """The echoed prompt: ids, and the engine's TokenLogprobs of ids[1:]."""
        self.add(ids[0], None, ())
        for i, token in enumerate(ids[1:]):
            top = zip(scored.top_ids[i][:k].tolist(), scored.top[i][:k].tolist())
            self.add(token, float(scored.chosen[i]), list(top))


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprob(pieces: Pieces, event) -> dict:
    """One content[] entry of a chat choice's logprobs: {token, logprob, bytes, top_logprobs}."""
    before = list(pieces.context)
    entry = _entry(pieces.take(event.token), event.logprob)
    entry["top_logprobs"] = [_entry(pieces.of(i, before), lp) for i, lp in event.top_logprobs]
    return entry


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
