"""MaxText.convert: the converted directory's layout, bit-exact round trips (bf16, sharded, tied, run
directories, unscanned runs), dtype casts, and one-line exit-2 errors. No compilation: fast."""

import json
import os
import shutil

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

# pylint: disable=wrong-import-position
from MaxText import convert
from MaxText.config import load_config
from MaxText.checkpoint.config_overlay import saved_model_keys
from MaxText.conversion import hf_to_maxtext, maxtext_to_hf
from MaxText.checkpoint.safetensors_io import SafetensorsReader, ShardedWriter
from MaxText.tests.helpers import BASE_YML, assert_bit_exact, make_hf_model, quiet, read_checkpoint_params
from MaxText.tests.helpers import safetensors_tensors, write_run_dir
from MaxText.checkpoint import checkpointing


def run_cli(argv, capsys) -> tuple:
    """(exit code, stdout, stderr) of python3 -m MaxText.convert argv, run in-process."""
    try:
        code = convert.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module", name="tied")
def tied_fixture(tmp_path_factory):
    """A Llama-2-style model with tied embeddings (no lm_head tensor), converted through the CLI."""
    root = tmp_path_factory.mktemp("tied")
    hf = make_hf_model("llama2_tied", root / "hf")
    return root, hf


def test_cli_writes_the_documented_layout(tied, capsys):
    root, hf = tied
    code, out, _ = run_cli(["hf_to_maxtext", "--input", root / "hf", "--output", root / "ckpt"], capsys)
    assert code == 0
    assert "[11/11] " in out and "token_embedder/embedding" in out and "done in" in out  # progress per tensor
    names = set(os.listdir(root / "ckpt"))
    assert {"state", "meta", "model.yml", "tokenizer.json", "tokenizer_config.json"} <= names
    meta = checkpointing.read_meta(str(root / "ckpt"))
    assert meta["format_version"] == checkpointing.FORMAT_VERSION and meta["source"]["model_type"] == "llama"
    assert meta["tokenizer"]["type"] == "huggingface"
    keys = meta["config"]
    assert keys["tokenizer_path"] == str(root / "ckpt" / "tokenizer.json")
    assert (keys["logits_via_embedding"], keys["base_num_kv_heads"], keys["rope_type"]) == (
        True,
        4,
        "default",
    )
    assert (keys["add_bos"], keys["add_eos"], keys["weight_dtype"]) == (True, False, "float32")
    with open(root / "ckpt" / "model.yml", encoding="utf-8") as f:
        assert yaml.safe_load(f) == keys
    # The overlay makes the checkpoint's model keys apply to a config that names only the path.
    cfg = load_config(
        [BASE_YML, f"load_parameters_path={root / 'ckpt'}"], overlay=saved_model_keys(str(root / "ckpt"))
    )
    assert (cfg.base_emb_dim, cfg.head_dim, cfg.vocab_size, cfg.normalization_layer_epsilon) == (
        64,
        16,
        300,
        1e-6,
    )
    # Our scanned layout: layer i of a stacked kernel is the transposed, reshaped Hugging Face weight.
    params = read_checkpoint_params(root / "ckpt")
    assert ("params", "decoder", "logits_dense", "kernel") not in params
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    query = params[("params", "decoder", "layers", "self_attention", "query", "kernel")]
    assert query.shape == (64, 2, 4, 16)
    np.testing.assert_array_equal(
        query[:, 1], sd["model.layers.1.self_attn.q_proj.weight"].T.reshape(64, 4, 16)
    )
    out = params[("params", "decoder", "layers", "self_attention", "out", "kernel")]
    np.testing.assert_array_equal(
        out[:, 0], sd["model.layers.0.self_attn.o_proj.weight"].T.reshape(4, 16, 64)
    )
    norm = params[("params", "decoder", "layers", "pre_self_attention_layer_norm", "scale")]
    np.testing.assert_array_equal(norm[:, 1], sd["model.layers.1.input_layernorm.weight"])


def test_tied_round_trip_is_bit_exact(tied, capsys):
    root, _ = tied
    if not (root / "ckpt").exists():
        hf_to_maxtext.convert(str(root / "hf"), str(root / "ckpt"), log=quiet)
    code, _, _ = run_cli(["maxtext_to_hf", "--input", root / "ckpt", "--output", root / "back"], capsys)
    assert code == 0
    assert_bit_exact(safetensors_tensors(root / "hf"), safetensors_tensors(root / "back"))
    with open(root / "back" / "config.json", encoding="utf-8") as f:
        assert json.load(f)["tie_word_embeddings"] is True


def test_bf16_sharded_round_trip_keeps_dtype_and_bits(tmp_path):
    make_hf_model("llama3", tmp_path / "hf", dtype=torch.bfloat16, max_shard_size="100KB", tokenizer=False)
    assert len(SafetensorsReader(str(tmp_path / "hf")).files) > 1
    meta = hf_to_maxtext.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"), log=quiet)
    assert meta["config"]["weight_dtype"] == "bfloat16" and "tokenizer_path" not in meta["config"]
    assert {str(a.dtype) for a in read_checkpoint_params(tmp_path / "ckpt").values()} == {"bfloat16"}
    files = maxtext_to_hf.export(
        str(tmp_path / "ckpt"), str(tmp_path / "back"), max_shard_bytes=60_000, log=quiet
    )
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    assert_bit_exact(safetensors_tensors(tmp_path / "hf"), safetensors_tensors(tmp_path / "back"))
    with open(tmp_path / "back" / "model.safetensors.index.json", encoding="utf-8") as f:
        assert set(json.load(f)["weight_map"]) == set(safetensors_tensors(tmp_path / "hf"))


def test_dtype_flag_casts_every_tensor(tmp_path):
    hf = make_hf_model("mistral", tmp_path / "hf", dtype=torch.bfloat16, tokenizer=False)
    meta = hf_to_maxtext.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"), dtype="float32", log=quiet)
    assert meta["config"]["weight_dtype"] == "float32" and meta["config"]["sliding_window_size"] == 8
    embedding = read_checkpoint_params(tmp_path / "ckpt")[("params", "token_embedder", "embedding")]
    assert embedding.dtype == np.float32
    np.testing.assert_array_equal(embedding, hf.model.embed_tokens.weight.float().detach().numpy())


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unscanned"])
def test_export_from_a_run_directory(tmp_path, scan_layers, capsys):
    make_hf_model("llama3", tmp_path / "hf", tokenizer=False)
    hf_to_maxtext.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"), log=quiet)
    run = write_run_dir(tmp_path, tmp_path / "ckpt", scan_layers)
    code, _, _ = run_cli(
        ["maxtext_to_hf", "--input", run, "--output", tmp_path / "step3", "--step", 3], capsys
    )
    assert code == 0
    source = safetensors_tensors(tmp_path / "hf")
    assert_bit_exact(source, safetensors_tensors(tmp_path / "step3"))
    maxtext_to_hf.export(run, str(tmp_path / "latest"), log=quiet)  # step 5: every weight doubled
    latest = safetensors_tensors(tmp_path / "latest")
    assert all(torch.equal(latest[k], 2 * v) for k, v in source.items())
    with open(tmp_path / "latest" / "config.json", encoding="utf-8") as f:
        assert json.load(f)["rope_parameters"]["rope_type"] == "llama3"


def _write_tensors(path, tensors: dict) -> None:
    writer = ShardedWriter(str(path), [(k, v.shape, v.dtype) for k, v in tensors.items()], 2**40)
    for k, v in tensors.items():
        writer.write(k, v)
    writer.close()


@pytest.fixture(name="small_hf")
def _small_hf(tmp_path):
    make_hf_model("llama3", tmp_path / "hf", tokenizer=False)
    return tmp_path / "hf"


def _edit_config(hf_dir, **changes):
    with open(hf_dir / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    config.update(changes)
    with open(hf_dir / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f)


def _edit_tensors(hf_dir, drop=(), add=None):
    reader = SafetensorsReader(str(hf_dir))
    tensors = {k: np.array(reader.get(k)) for k in reader.names() if k not in drop}
    tensors.update(add or {})
    os.remove(hf_dir / "model.safetensors")
    _write_tensors(hf_dir, tensors)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: _edit_config(d, model_type="gpt2", architectures=["GPT2LMHeadModel"]), "model_type 'gpt2' (GPT2LMHeadModel) is not supported"),
        (lambda d: _edit_config(d, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "rope_type='yarn' is not supported"),
        (lambda d: _edit_config(d, attention_bias=True), "attention_bias=true is not supported"),
        (lambda d: _edit_tensors(d, drop=["model.layers.1.mlp.up_proj.weight"]), "tensor 'model.layers.1.mlp.up_proj.weight' is missing"),
        (lambda d: _edit_tensors(d, add={"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}), "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"),
        (lambda d: _edit_config(d, hidden_size=32), "tensor 'model.embed_tokens.weight' has shape [300, 64], config.json implies [300, 32]"),
        (lambda d: os.remove(d / "model.safetensors"), "no *.safetensors files"),
    ],
    ids=["architecture", "rope", "bias", "missing", "unexpected", "shape", "no_weights"],
)  # fmt: skip
def test_unsupported_input_exits_2_with_one_line(small_hf, tmp_path, capsys, breakage, message):
    breakage(small_hf)
    code, _, err = run_cli(["hf_to_maxtext", "--input", small_hf, "--output", tmp_path / "out"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_existing_output_and_bad_arguments_exit_2(small_hf, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    code, _, err = run_cli(["hf_to_maxtext", "--input", small_hf, "--output", tmp_path / "out"], capsys)
    assert code == 2 and "exists and is not empty" in err
    assert (
        run_cli(["hf_to_maxtext", "--input", small_hf, "--output", tmp_path / "out", "--overwrite"], capsys)[
            0
        ]
        == 0
    )
    assert not (tmp_path / "out" / "keep").exists()
    code, _, err = run_cli(
        ["maxtext_to_hf", "--input", tmp_path / "out", "--output", tmp_path / "x", "--step", 9], capsys
    )
    assert code == 2 and "no checkpoint for --step 9" in err
    code, _, err = run_cli(["to_onnx", "--input", small_hf], capsys)
    assert code == 2 and "invalid choice: 'to_onnx'" in err
    shutil.rmtree(small_hf)
    code, _, err = run_cli(["hf_to_maxtext", "--input", small_hf, "--output", tmp_path / "y"], capsys)
    assert code == 2 and "no such directory" in err


def test_parse_size():
    assert convert.parse_size("5GB") == 5 * 2**30 and convert.parse_size("500MB") == 500 * 2**20
    assert convert.parse_size("1.5G") == int(1.5 * 2**30) and convert.parse_size("1234") == 1234
