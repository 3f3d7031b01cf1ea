"""Several LoRA adapters served at once (lora_paths): a batch mixing the base and two adapters gives each
request the tokens it gets from an engine serving its adapter alone (lora_path=) or the base alone, and the
server routes requests by their `model` field and lists the adapters in /v1/models."""

import numpy as np
import pytest

from MaxText.checkpoint.config_overlay import load_config_from_checkpoint
from MaxText.config import ConfigError, load_config
from MaxText.conversion import lora as lora_conversion
from MaxText.inference import session as session_lib
from MaxText.inference.batcher import Request
from MaxText.inference.engine import SamplingParams
from MaxText.layers import lora
from MaxText.parallel import mesh as mesh_lib
from MaxText.tests.helpers import BASE_YML, quiet, save_random_params

MODEL = [
    "base_emb_dim=64", "base_mlp_dim=128", "base_num_query_heads=2", "base_num_kv_heads=2", "head_dim=32",
    "base_num_decoder_layers=2", "max_target_length=40", "max_prefill_predict_length=16", "decode_batch_size=4",
    "decode_sampling_strategy=greedy",
]  # fmt: skip
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13], [3], [40, 41, 42, 43], [7, 7, 7]]
CHOICES = [0, 1, 2, 1, 0]  # base, a, b, a, base


def _random_adapter(root, base_dir, name: str, seed: int, alpha: float, rank: int = 4) -> str:
    """An adapter checkpoint on `base_dir` with random A and B (B nonzero, so it changes the model)."""
    cfg = load_config([BASE_YML, *MODEL, f"lora_rank={rank}", f"lora_alpha={alpha}"])
    abstract, _ = lora_conversion._abstract(cfg)
    flat = {k: v for k, v in lora_conversion._flat(abstract).items() if lora.is_adapter(k)}
    rng = np.random.default_rng(seed)
    arrays = {k: (0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in flat.items()}
    return lora_conversion._write_adapter_checkpoint(arrays, cfg, base_dir, str(root / name), False, quiet)


@pytest.fixture(scope="module", name="dirs")
def dirs_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = save_random_params(str(root / "base"), load_config([BASE_YML, *MODEL]))
    return base, _random_adapter(root, base, "a", 1, 8.0), _random_adapter(root, base, "b", 2, 4.0)


def _session(base, *overrides):
    """A session as decode and serve build it (lora_path's adapter shape applies from its checkpoint)."""
    cfg, path = load_config_from_checkpoint(
        [BASE_YML, *MODEL, f"load_parameters_path={base}", *overrides], True
    )
    return session_lib.DecodeSession.from_checkpoint(cfg, path)


def _tokens(session, prompts, adapters):
    requests = [Request(p, 6, SamplingParams(), adapter=k) for p, k in zip(prompts, adapters)]
    with mesh_lib.activate(session.mesh, session.rules):
        return [c.tokens for c in session.batcher.complete(requests)]


def test_a_mixed_batch_equals_each_adapter_served_alone(dirs):
    base, a, b = dirs
    both = _session(base, f"lora_paths=a={a},b={b}")
    assert both.adapter_names == ("a", "b")
    mixed = _tokens(both, PROMPTS, CHOICES)
    alone = {
        0: _tokens(_session(base), PROMPTS, [0] * len(PROMPTS)),
        1: _tokens(_session(base, f"lora_path={a}"), PROMPTS, [0] * len(PROMPTS)),
        2: _tokens(_session(base, f"lora_path={b}"), PROMPTS, [0] * len(PROMPTS)),
    }
    for i, k in enumerate(CHOICES):
        assert mixed[i] == alone[k][i], (i, k)
    assert alone[1] != alone[0] and alone[2] != alone[1]  # the adapters change what is generated
    with pytest.raises(ValueError, match="adapter=3: this engine serves adapters 1 to 2"):
        both.engine.prefill([1, 2], 2, adapter=3)


def test_the_server_routes_by_model_and_lists_adapters(dirs):
    fastapi_testclient = pytest.importorskip("fastapi.testclient")
    from MaxText.inference import server  # pylint: disable=import-outside-toplevel
    from MaxText.input_pipeline.chat_template import (
        load_chat_template,
    )  # pylint: disable=import-outside-toplevel

    base, a, b = dirs
    both = _session(base, f"lora_paths=a={a},b={b}")
    service = server.Service(both, "tiny", load_chat_template("", both.cfg.tokenizer_path))
    expected = _tokens(_session(base, f"lora_path={b}"), [both.encode_prompt("ROMEO:")], [0])[0]
    with fastapi_testclient.TestClient(server.make_app(service)) as client:
        listed = client.get("/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["tiny", "a", "b"] and listed[1]["parent"] == "tiny"
        body = {"prompt": "ROMEO:", "max_tokens": 6, "temperature": 0, "model": "b"}
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "b"
        assert r.json()["choices"][0]["text"] == both.tokenizer.decode(expected)
        r = client.post("/v1/completions", json={**body, "model": "c"})
        assert r.status_code == 404 and "'tiny', 'a', 'b'" in r.json()["error"]["message"]


def test_lora_paths_refuses_mismatched_or_bad_adapters(dirs, tmp_path):
    base, a, _ = dirs
    other = _random_adapter(tmp_path, base, "r8", 3, 8.0, rank=8)
    with pytest.raises(ConfigError, match="adapter 'c' .* has lora_rank=8 .* need the same rank and targets"):
        _session(base, f"lora_paths=a={a},c={other}")
    with pytest.raises(ConfigError, match="'a=' is not name=directory"):
        _session(base, "lora_paths=a=")
    with pytest.raises(ConfigError, match="the name 'a' is given twice"):
        _session(base, f"lora_paths=a={a},a={a}")
    with pytest.raises(ConfigError, match="lora_path=.*not a LoRA checkpoint"):
        _session(base, f"lora_paths=a={base}")
