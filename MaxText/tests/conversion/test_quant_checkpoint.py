"""`MaxText.convert quantize` writes int8 kernels + scales; decoding that checkpoint by path alone generates
what quantizing the float checkpoint on the fly generates (the MaxText.decode / MaxText.serve path)."""

import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import convert, decode
from MaxText.config import ConfigError, load_config
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint
from MaxText.inference.session import DecodeSession
from MaxText.tests.helpers import BASE_YML, save_random_params

MODEL = ["base_emb_dim=64", "base_mlp_dim=128", "base_num_query_heads=2", "base_num_kv_heads=2", "head_dim=32",
         "base_num_decoder_layers=2"]  # fmt: skip
DECODE = ["max_target_length=32", "max_prefill_predict_length=16", "max_decode_steps=8", "decode_batch_size=2",
          "decode_sampling_strategy=greedy", "prompt=ROMEO:|JULIET: O"]  # fmt: skip


@pytest.fixture(scope="module", name="checkpoints")
def _checkpoints(tmp_path_factory):
    """(float checkpoint, its int8w conversion): a random tiny model saved like a training run's."""
    root = tmp_path_factory.mktemp("quant_ckpt")
    src = save_random_params(str(root / "float"), load_config([BASE_YML, *MODEL]))
    dst = str(root / "int8w")
    args = [f"load_parameters_path={src}", f"save_quantized_params_path={dst}", "quantization=int8w"]
    assert convert.main(["quantize", BASE_YML, *args]) == 0
    return src, dst


def _session(*argv):
    cfg, path = load_config_from_checkpoint([BASE_YML, *DECODE, *argv], require_checkpoint=True)
    return DecodeSession.from_checkpoint(cfg, path)


def test_quantized_checkpoint_holds_int8_kernels_and_its_config(checkpoints):
    _, dst = checkpoints
    cfg, _ = load_config_from_checkpoint([BASE_YML, f"load_parameters_path={dst}"], require_checkpoint=True)
    assert cfg.quantization == "int8w" and cfg.checkpoint_is_quantized and cfg.base_emb_dim == 64
    session = _session(f"load_parameters_path={dst}")
    layer = session.params["decoder"]["layers_0"]
    wq = layer["self_attention"]["query"]
    assert wq["kernel"].dtype == jnp.int8 and wq["kernel"].shape == (64, 2, 32)
    assert wq["kernel_scale"].shape == (1, 2, 32) and wq["kernel_scale"].dtype == jnp.float32
    assert layer["mlp"]["wo"]["kernel"].dtype == jnp.int8
    assert session.params["token_embedder"]["embedding"].dtype == jnp.float32  # embeddings stay float


@pytest.mark.slow
def test_decoding_the_quantized_checkpoint_equals_quantizing_on_the_fly(checkpoints, capsys):
    src, dst = checkpoints
    stored = _session(f"load_parameters_path={dst}")
    on_the_fly = _session(f"load_parameters_path={src}", "quantization=int8w")
    ids = jnp.asarray([[5, 17, 300, 42, 9, 1000]])
    inputs = (ids, jnp.arange(6)[None], jnp.ones((1, 6), jnp.int32), "train")
    got = stored.engine.model.apply({"params": stored.params}, *inputs)[0]
    want = on_the_fly.engine.model.apply({"params": on_the_fly.params}, *inputs)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    prompts = ["ROMEO:", "JULIET: O"]
    want_texts = on_the_fly.generate_text(prompts)["texts"]
    assert all(want_texts)
    # MaxText.decode takes the directory alone (its config carries quantization and the stored layout).
    assert decode.main([BASE_YML, *DECODE, f"load_parameters_path={dst}"]) == 0
    out = capsys.readouterr().out
    assert all(f"{p}{t}\n" in out for p, t in zip(prompts, want_texts))


def test_quantize_refuses_bad_settings(checkpoints, tmp_path):
    src, dst = checkpoints
    base = ["quantize", BASE_YML, f"load_parameters_path={src}"]
    with pytest.raises(ConfigError, match="save_quantized_params_path=''"):
        convert.main.__wrapped__([*base, "quantization=int8w"])
    with pytest.raises(ConfigError, match="quantization='fp8'"):
        convert.main.__wrapped__([*base, f"save_quantized_params_path={tmp_path}/q", "quantization=fp8"])
    with pytest.raises(ConfigError, match="exists and is not empty"):
        convert.main.__wrapped__([*base, f"save_quantized_params_path={dst}", "quantization=int8"])
