"""api.load(...).generate, MaxText.decode's DecodeSession and the server's /v1/completions are one decode
stack: the same prompt text encodes to the same ids (one PromptTokenizer, one BOS/EOS rule) and gives the
same greedy tokens on all three."""

import pytest
from fastapi.testclient import TestClient

from MaxText import api
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint
from MaxText.config import load_config
from MaxText.inference import prompt, server
from MaxText.input_pipeline.chat_template import ChatTemplate
from MaxText.inference.session import DecodeSession
from MaxText.tests.helpers import BASE_YML, save_random_params

MODEL = [
    "base_emb_dim=64", "base_mlp_dim=128", "base_num_query_heads=2", "base_num_kv_heads=2", "head_dim=32",
    "base_num_decoder_layers=2",
]  # fmt: skip
NEW = 10
DECODE = ["decode_sampling_strategy=greedy", f"max_decode_steps={NEW}", "max_target_length=32",
          "max_prefill_predict_length=16", "decode_batch_size=2", "matmul_precision=highest"]  # fmt: skip
PROMPTS = ["ROMEO:", "To be, or not"]


@pytest.fixture(scope="module", name="ckpt")
def _ckpt(tmp_path_factory):
    """A random tiny model saved like a training run's step (built-in SentencePiece tokenizer)."""
    root = tmp_path_factory.mktemp("paths")
    return save_random_params(str(root / "ckpt"), load_config([BASE_YML, *MODEL]))


def _session(ckpt, *argv) -> DecodeSession:
    cfg, path = load_config_from_checkpoint(
        [BASE_YML, f"load_parameters_path={ckpt}", *DECODE, *argv], require_checkpoint=True
    )
    return DecodeSession.from_checkpoint(cfg, path)


def test_one_prompt_rule(ckpt):
    model, session = api.load(ckpt), _session(ckpt)
    assert api.PromptTokenizer is prompt.PromptTokenizer
    assert type(model.tokenizer) is type(session.tokenizer) is prompt.PromptTokenizer
    assert session.cfg.add_bos and session.cfg.add_eos  # the run's data settings (base.yml's)
    bos, eos, raw = session.tokenizer.bos_id, session.tokenizer.eos_id, session.tokenizer.raw.encode
    for text in PROMPTS:  # BOS as add_bos says; never EOS, although add_eos=true marked the documents' ends
        assert session.encode_prompt(text) == model.tokenizer.encode(text) == [bos] + raw(text)
    # add_bos=false (on the command line, or api.load's argument) drops BOS on both paths.
    assert _session(ckpt, "add_bos=false").encode_prompt(PROMPTS[0]) == raw(PROMPTS[0])
    assert api.load(ckpt, add_bos=False).tokenizer.encode(PROMPTS[0]) == raw(PROMPTS[0])
    assert model.tokenizer.encode(PROMPTS[0], add_eos=True) == [bos] + raw(PROMPTS[0]) + [eos]


def test_api_session_and_server_give_the_same_greedy_tokens(ckpt):
    model, session = api.load(ckpt), _session(ckpt)
    want = session.generate_text(PROMPTS)
    assert all(want["tokens"])
    for text, tokens in zip(PROMPTS, want["tokens"]):
        ids = model.tokenizer.encode(text)
        row = model.generate([ids], NEW)[0, len(ids) :].tolist()
        if model.eos_id in row:  # the session ends a request at EOS (not emitted); api pads after it
            row = row[: row.index(model.eos_id)]
        assert row == tokens, text
    with TestClient(server.make_app(server.Service(session, "tiny", ChatTemplate("")))) as client:
        for text, tokens, continuation in zip(PROMPTS, want["tokens"], want["texts"]):
            reply = client.post("/v1/completions", json={"prompt": text, "max_tokens": NEW, "temperature": 0})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["text"] == continuation == session.tokenizer.decode(tokens)
            usage = reply.json()["usage"]
            assert usage["prompt_tokens"] == len(session.encode_prompt(text))
            assert usage["completion_tokens"] == len(tokens)
