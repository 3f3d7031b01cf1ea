"""The server's OpenAI fields in process (fastapi TestClient): logprobs equal the forward pass's log_softmax,
echo scores the prompt, n samples, penalties equal a numpy reference, the prompt forms, include_usage,
refused fields, the tokenizer endpoints; decode's one-line errors."""

import numpy as np
import pytest

from MaxText import decode
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint
from MaxText.config import load_config
from MaxText.inference import session as session_lib
from MaxText.tests.helpers import BASE_YML, full_logits, save_random_params

fastapi_testclient = pytest.importorskip("fastapi.testclient")

MODEL = [
    "base_emb_dim=64", "base_mlp_dim=128", "base_num_query_heads=2", "base_num_kv_heads=2", "head_dim=32",
    "base_num_decoder_layers=2", "max_target_length=40", "max_prefill_predict_length=16", "decode_batch_size=4",
    "matmul_precision=highest",
]  # fmt: skip


@pytest.fixture(scope="module", name="ckpt")
def ckpt_fixture(tmp_path_factory):
    return save_random_params(str(tmp_path_factory.mktemp("oai") / "run"), load_config([BASE_YML, *MODEL]))


@pytest.fixture(scope="module", name="app")
def app_fixture(ckpt):
    from MaxText.inference import server  # pylint: disable=import-outside-toplevel
    from MaxText.input_pipeline.chat_template import (
        load_chat_template,
    )  # pylint: disable=import-outside-toplevel

    cfg, path = load_config_from_checkpoint([BASE_YML, *MODEL, f"load_parameters_path={ckpt}"], True)
    session = session_lib.DecodeSession.from_checkpoint(cfg, path)
    service = server.Service(session, "tiny", load_chat_template("", cfg.tokenizer_path))
    with fastapi_testclient.TestClient(server.make_app(service)) as client:
        yield client, session


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _forward_lp(session, ids):
    """[len(ids), V] log_softmax of the forward pass's logits at every position."""
    logits = full_logits(session.engine.model, session.engine.params, np.asarray([ids], np.int32))[0]
    return _log_softmax(logits.astype(np.float64))


def _post(client, path, body, status=200):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


def test_completion_logprobs_equal_the_forward_pass(app):
    client, session = app
    ids = session.encode_prompt("ROMEO:")
    out = _post(client, "/v1/completions", {"prompt": ids, "max_tokens": 5, "temperature": 0, "logprobs": 3,
                                            "ignore_eos": True})  # fmt: skip
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == 5 and len(lp["text_offset"]) == 5
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == list(np.cumsum([0] + [len(t) for t in lp["tokens"]])[:-1])
    # Greedy: each generated token is the forward pass's argmax after the ones before it.
    seq = list(ids)
    for i in range(5):
        ref = _forward_lp(session, seq)[-1]
        nxt = int(np.argmax(ref))
        np.testing.assert_allclose(lp["token_logprobs"][i], ref[nxt], atol=1e-5)
        top = sorted(lp["top_logprobs"][i].values(), reverse=True)
        np.testing.assert_allclose(top, np.sort(ref)[::-1][:3], atol=1e-5)
        seq.append(nxt)


def test_echo_scores_the_prompt_with_max_tokens_0_and_1(app):
    client, session = app
    text = "To be, or not"
    ids = session.encode_prompt(text)
    ref = _forward_lp(session, ids)
    for max_tokens in (0, 1):
        body = {"prompt": text, "max_tokens": max_tokens, "logprobs": 1, "echo": True, "temperature": 0}
        choice = _post(client, "/v1/completions", body)["choices"][0]
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(ids) + max_tokens and lp["token_logprobs"][0] is None
        assert lp["top_logprobs"][0] is None and choice["text"].startswith(text)
        want = ref[np.arange(len(ids) - 1), ids[1:]]
        np.testing.assert_allclose(lp["token_logprobs"][1 : len(ids)], want, atol=1e-5)
        for i in range(1, len(ids)):
            np.testing.assert_allclose(max(lp["top_logprobs"][i].values()), ref[i - 1].max(), atol=1e-5)
    _post(client, "/v1/completions", {"prompt": text, "max_tokens": 0}, 400)  # 0 only with echo


def test_chat_logprobs_shape(app):
    client, session = app
    messages = [{"role": "user", "content": "Hello"}]
    body = {"messages": messages, "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    out = _post(client, "/v1/chat/completions", body)
    content = out["choices"][0]["logprobs"]["content"]
    # One entry per generated token (EOS may end the reply before max_tokens), and they spell the reply.
    assert len(content) == out["usage"]["completion_tokens"] >= 1
    assert "".join(e["token"] for e in content) == out["choices"][0]["message"]["content"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"} and len(entry["top_logprobs"]) == 2
        assert entry["bytes"] == list(entry["token"].encode())
        # Greedy picks the most likely token: its log-prob is the first of the top ones.
        assert abs(entry["logprob"] - entry["top_logprobs"][0]["logprob"]) < 1e-6
    tok = _post(client, "/tokenize", {"messages": messages})
    assert tok["count"] == out["usage"]["prompt_tokens"] == len(tok["tokens"])
    ref = _forward_lp(session, tok["tokens"])[-1]
    np.testing.assert_allclose(content[0]["logprob"], ref.max(), atol=1e-5)
    _post(client, "/v1/chat/completions", {"messages": messages, "top_logprobs": 2}, 400)


def test_n_samples_and_prompt_forms(app):
    client, session = app
    base = {"max_tokens": 6, "ignore_eos": True}
    prefills, engine_prefill = [], session.engine.prefill
    session.engine.prefill = lambda *a, **k: prefills.append(1) or engine_prefill(*a, **k)
    greedy = _post(client, "/v1/completions", {**base, "prompt": "A", "n": 3, "temperature": 0})["choices"]
    assert [c["index"] for c in greedy] == [0, 1, 2] and len({c["text"] for c in greedy}) == 1
    assert len(prefills) == 1  # the n samples share one prefill
    del session.engine.prefill
    hot = _post(client, "/v1/completions", {**base, "prompt": "A", "n": 3, "temperature": 1.0, "seed": 5})
    assert len({c["text"] for c in hot["choices"]}) > 1 and hot["usage"]["completion_tokens"] == 18
    many = _post(client, "/v1/completions", {**base, "prompt": ["A", "ROMEO:"], "temperature": 0})["choices"]
    ids = [session.encode_prompt(p) for p in ("A", "ROMEO:")]
    as_ids = _post(client, "/v1/completions", {**base, "prompt": ids, "temperature": 0})["choices"]
    one = _post(client, "/v1/completions", {**base, "prompt": ids[1], "temperature": 0})["choices"]
    assert [c["text"] for c in many] == [c["text"] for c in as_ids] and many[1]["text"] == one[0]["text"]
    assert many[0]["text"] == greedy[0]["text"] and [c["index"] for c in many] == [0, 1]


def test_penalties_equal_a_numpy_reference(app):
    client, session = app
    ids = session.encode_prompt("First Citizen:")
    body = {"prompt": ids, "max_tokens": 2, "temperature": 0, "ignore_eos": True, "logprobs": 0}
    plain = _post(client, "/v1/completions", body)["choices"][0]
    pen = {"presence_penalty": 1.5, "frequency_penalty": 2.0}
    first = int(np.argmax(_forward_lp(session, ids)[-1]))
    logits = full_logits(session.engine.model, session.engine.params, np.asarray([ids + [first]]))[0, -1]
    counts = np.zeros_like(logits)
    counts[first] = 1
    want = int(np.argmax(logits - 2.0 * counts - 1.5 * (counts > 0)))
    got = _post(client, "/v1/completions", {**body, **pen, "max_tokens": 2})["choices"][0]
    assert got["logprobs"]["tokens"][0] == plain["logprobs"]["tokens"][0]  # no generated tokens yet
    assert (
        got["logprobs"]["tokens"][1]
        == session.tokenizer.decode([first, want])[len(session.tokenizer.decode([first])) :]
    )
    long = {"prompt": ids, "max_tokens": 20, "temperature": 0, "ignore_eos": True}
    a = _post(client, "/v1/completions", long)["choices"][0]["text"]
    b = _post(client, "/v1/completions", {**long, "frequency_penalty": 2.0})["choices"][0]["text"]
    assert a != b
    _post(client, "/v1/completions", {**long, "presence_penalty": 3.0}, 400)


def test_stream_include_usage_and_refused_fields(app):
    client, _ = app
    body = {"prompt": "A", "max_tokens": 4, "temperature": 0, "stream": True, "n": 2,
            "stream_options": {"include_usage": True}, "ignore_eos": True}  # fmt: skip
    with client.stream("POST", "/v1/completions", json=body) as r:
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    import json  # pylint: disable=import-outside-toplevel

    chunks = [json.loads(c) for c in lines[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    assert all(c["usage"] is None for c in chunks[:-1]) and {
        c["choices"][0]["index"] for c in chunks[:-1]
    } == {0, 1}
    refused = [("logit_bias", {"5": 10}), ("suffix", "x"), ("best_of", 2), ("tools", [{"type": "function"}]),
               ("response_format", {"type": "json_object"})]  # fmt: skip
    for name, value in refused:
        r = client.post("/v1/completions", json={"prompt": "A", "max_tokens": 2, name: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == name, r.text
    ok = {"prompt": "A", "max_tokens": 2, "best_of": 1, "logit_bias": {}, "user": "u", "not_openai": 1}
    assert _post(client, "/v1/completions", ok)["usage"]["completion_tokens"] <= 2


def test_tokenizer_endpoints_round_trip(app):
    client, session = app
    text = "What light through yonder window"
    tok = _post(client, "/tokenize", {"prompt": text})
    assert tok["tokens"] == session.encode_prompt(text) and tok["max_model_len"] == 40
    bare = _post(client, "/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]
    assert bare == session.tokenizer.encode(text, add_bos=False)
    assert _post(client, "/detokenize", {"tokens": tok["tokens"]})["prompt"] == text
    info = client.get("/tokenizer_info").json()
    assert (
        info["eos_token_id"] == session.tokenizer.eos_id
        and info["vocab_size"] == session.tokenizer.vocab_size
    )
    _post(client, "/tokenize", {}, 400)


def test_decode_errors_are_one_line(ckpt, capsys):
    common = [BASE_YML, *MODEL, f"load_parameters_path={ckpt}"]
    cases = [
        (["decode_sampling_strategy=topk", "decode_sampling_top_k=0"], "decode_sampling_top_k=0"),
        (["decode_sampling_strategy=nucleus"], "decode_sampling_nucleus_p=1"),
        (["prompt=" + "Romeo " * 40], "max_prefill_predict_length=16"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as e:
            decode.main(common + extra)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err
