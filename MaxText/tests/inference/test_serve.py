"""MaxText.serve over real HTTP on 127.0.0.1: concurrent requests equal the same requests served alone,
streaming equals non-streaming, bad requests get their 4xx and the server keeps serving, a full queue
answers 429, a client leaving mid-stream frees its slot, the OpenAI client works, SIGTERM drains."""

import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from MaxText import paths
from MaxText.config import load_config
from MaxText.serve import model_id
from MaxText.tests.helpers import BASE_YML, save_random_params
from MaxText.checkpoint import checkpointing

pytestmark = pytest.mark.slow

MODEL = [
    "base_emb_dim=64", "base_mlp_dim=128", "base_num_query_heads=2", "base_num_kv_heads=2", "head_dim=32",
    "base_num_decoder_layers=2",
]  # fmt: skip
SERVE = ["max_target_length=48", "max_prefill_predict_length=24", "decode_batch_size=4", "kv_cache=paged",
         "kv_page_size=8", "max_queue_size=32", "api_key=secret"]  # fmt: skip
AUTH = {"Authorization": "Bearer secret"}
PROMPTS = ["ROMEO:", "JULIET: O", "To be, or not", "First Citizen:", "A", "What light through yonder window"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", name="server")
def _server(tmp_path_factory):
    """Saves a random tiny model's checkpoint and serves it; yields (base url, process). Stops it after."""
    run = tmp_path_factory.mktemp("serve") / "tinyrun"
    save_random_params(checkpointing.checkpoint_dir(str(run)), load_config([BASE_YML, *MODEL]), step=3)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=paths.REPO_ROOT, XLA_FLAGS="")  # one CPU device
    cmd = [sys.executable, "-m", "MaxText.serve", BASE_YML, f"load_parameters_path={run}/checkpoints/3",
           f"port={port}", *SERVE]  # fmt: skip
    # The server outlives this statement (tests use it, the SIGTERM test stops it): no `with` here.
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        cmd, env=env, cwd=paths.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("server did not come up in 240 s")
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def _complete(url, prompt, max_tokens, **extra):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    r = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_model_id_is_the_run_name():
    assert model_id("/x/runs/r1/checkpoints/12") == "r1"
    assert model_id("/x/runs/r1") == "r1" and model_id("/x/converted/llama-7b/") == "llama-7b"


def test_concurrent_requests_equal_requests_served_alone(server):
    url, _ = server
    jobs = [(PROMPTS[i % len(PROMPTS)], 4 + (i * 7) % 25) for i in range(32)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda job: _complete(url, *job), jobs))
    alone = {job: _complete(url, *job) for job in set(jobs)}
    for job, got in zip(jobs, together):
        want = alone[job]
        assert got["choices"][0]["text"] == want["choices"][0]["text"]
        assert got["usage"] == want["usage"]
        assert got["model"] == "tinyrun"
        assert got["usage"]["completion_tokens"] <= job[1]
        finish = got["choices"][0]["finish_reason"]
        assert finish == "stop" or got["usage"]["completion_tokens"] == job[1]


def _sse(url, path, body):
    chunks = []
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, headers=AUTH, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[len("data: ") :])
    assert chunks[-1] == "[DONE]"
    return [json.loads(c) for c in chunks[:-1]]


def test_streaming_equals_non_streaming(server):
    url, _ = server
    body = {"prompt": PROMPTS[2], "max_tokens": 20, "temperature": 0}
    want = _complete(url, PROMPTS[2], 20)["choices"][0]["text"]
    chunks = _sse(url, "/v1/completions", body)
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    chat = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 12, "temperature": 0}
    r = httpx.post(f"{url}/v1/chat/completions", json=chat, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    chunks = _sse(url, "/v1/chat/completions", chat)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == message["content"]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    url, _ = server
    post = f"{url}/v1/completions"
    long_prompt = " ".join(["Romeo"] * 60)
    cases = [
        (dict(content=b"{not json"), 400, "invalid JSON"),
        (dict(json=[1, 2]), 400, "JSON object"),
        (dict(json={"prompt": "A", "max_tokens": "8"}), 400, "max_tokens"),
        (dict(json={"prompt": 5}), 400, "prompt"),
        (dict(json={"prompt": "A", "stream": "yes"}), 400, "stream"),
        (dict(json={"prompt": "A", "temperature": "hot"}), 400, "temperature"),
        (dict(json={"prompt": "A", "max_tokens": -1}), 400, "max_tokens=-1"),
        (dict(json={"prompt": "A", "max_tokens": 10**9}), 400, "max_tokens=1000000000"),
        (dict(json={"prompt": long_prompt}), 400, "at most"),
        (dict(json={"prompt": "A", "model": "gpt-4"}), 404, "does not exist"),
        (dict(json={"prompt": "A", "top_p": 0}), 400, "top_p"),
        (dict(json={"prompt": "A", "n": 0}), 400, "n=0"),
        (dict(json={"prompt": [[1, 2], [10**9]]}), 400, "token ids"),
        (dict(json={"prompt": "A"}, headers={"Authorization": "Bearer wrong"}), 401, "API key"),
        (dict(json={"prompt": "A"}, headers={}), 401, "API key"),
    ]
    for kwargs, status, message in cases:
        kwargs.setdefault("headers", AUTH)
        r = httpx.post(post, timeout=30, **kwargs)
        assert r.status_code == status, (kwargs, r.text)
        assert message in r.json()["error"]["message"], (kwargs, r.text)
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": "hi"}, headers=AUTH, timeout=30)
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    ok = _complete(url, "A", 3, unknown_field={"ignored": True})  # unknown fields are ignored
    assert ok["usage"]["completion_tokens"] <= 3
    assert httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"][0]["id"] == "tinyrun"


def _slots_busy(url) -> int:
    health = httpx.get(f"{url}/health", timeout=10).json()
    return health["active"] + health["queued"]


def test_disconnect_mid_stream_frees_the_slot(server):
    url, _ = server
    body = {"prompt": PROMPTS[0], "max_tokens": 40, "temperature": 0.8, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=AUTH, timeout=60) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))
    deadline = time.time() + 20
    while _slots_busy(url) and time.time() < deadline:
        time.sleep(0.05)
    assert _slots_busy(url) == 0
    assert _complete(url, "A", 2)["usage"]["completion_tokens"] <= 2


def test_full_queue_answers_429_and_metrics_report(server):
    url, _ = server
    body = {"prompt": "A", "max_tokens": 45, "ignore_eos": True}

    async def burst():  # 48 at once: up to 4 decode, 32 wait, the rest find the queue full
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(headers=AUTH, timeout=120, limits=limits) as client:
            replies = await asyncio.gather(
                *(client.post(f"{url}/v1/completions", json=body) for _ in range(48))
            )
        return [r.status_code for r in replies]

    codes = asyncio.run(burst())
    assert set(codes) == {200, 429} and codes.count(200) >= 32, codes  # at least the queue's worth
    metrics = httpx.get(f"{url}/metrics").text
    for name in (
        "maxtext_queue_depth",
        "maxtext_tokens_per_second",
        "maxtext_time_to_first_token_seconds_count",
    ):
        assert f"\n{name}" in metrics
    assert 'maxtext_requests_total{code="429"}' in metrics


def test_openai_client(server):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="secret")
    assert [m.id for m in client.models.list()] == ["tinyrun"]
    done = client.completions.create(model="tinyrun", prompt=PROMPTS[1], max_tokens=10, temperature=0)
    want = _complete(url, PROMPTS[1], 10)["choices"][0]["text"]
    assert done.choices[0].text == want and done.usage.completion_tokens <= 10
    stream = client.completions.create(
        model="tinyrun", prompt=PROMPTS[1], max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == want
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Speak."}]
    reply = client.chat.completions.create(model="tinyrun", messages=messages, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(
        model="tinyrun", messages=messages, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == reply.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="A", max_tokens=2)


def test_openai_client_logprobs_usage_and_n(server):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="secret")
    done = client.completions.create(
        model="tinyrun", prompt=PROMPTS[0], max_tokens=4, temperature=0, logprobs=2
    )
    lp = done.choices[0].logprobs
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == done.usage.completion_tokens
    assert all(
        len(t) == 2 and max(t.values()) >= v - 1e-6 for t, v in zip(lp.top_logprobs, lp.token_logprobs)
    )
    scored = client.completions.create(
        model="tinyrun", prompt=PROMPTS[2], max_tokens=1, logprobs=1, echo=True, temperature=0
    )
    assert (
        scored.choices[0].text.startswith(PROMPTS[2]) and scored.choices[0].logprobs.token_logprobs[0] is None
    )
    messages = [{"role": "user", "content": "Speak."}]
    reply = client.chat.completions.create(
        model="tinyrun", messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    assert all(len(c.top_logprobs) == 3 for c in reply.choices[0].logprobs.content)
    stream = client.chat.completions.create(
        model="tinyrun", messages=messages, max_tokens=4, temperature=0, n=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 2
    texts = ["", ""]
    for c in chunks[:-1]:
        texts[c.choices[0].index] += c.choices[0].delta.content or ""
    assert texts[0] == texts[1] == reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model="tinyrun", prompt="A", max_tokens=2, logit_bias={"5": 3})


def test_sigterm_drains_in_flight_requests(server):
    url, proc = server
    body = {"prompt": PROMPTS[3], "max_tokens": 30, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=AUTH, timeout=60) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data: ")]
    chunks = [json.loads(c[len("data: ") :]) for c in [first, *rest[:-1]]]
    assert rest[-1] == "data: [DONE]" and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert proc.wait(timeout=60) == 0
