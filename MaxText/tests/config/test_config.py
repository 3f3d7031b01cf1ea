"""Config loading, precedence, overrides and every class of user error."""

import dataclasses
import glob
import os
import subprocess
import sys

import pytest
import yaml

from MaxText import paths
from MaxText.config import ConfigError, load_config, save_config
from MaxText.config.loader import available_models
from MaxText.config.schema import SETTINGS


def test_base_yml_and_schema_list_the_same_keys(base_yml):
    with open(base_yml, encoding="utf-8") as f:
        keys = set(yaml.safe_load(f))
    assert keys == set(SETTINGS)


def test_defaults_load(base_yml):
    cfg = load_config([base_yml, "run_name=x"])
    assert cfg.base_emb_dim == 256 and cfg.mlp_activations == ["silu", "linear"]
    assert isinstance(cfg.normalization_layer_epsilon, float) and cfg.normalization_layer_epsilon == 1e-5
    assert os.path.isabs(cfg.tokenizer_path)


def test_precedence_cli_over_model_over_base(base_yml):
    cfg = load_config([base_yml, "model_name=llama3-8b"])
    assert cfg.base_num_kv_heads == 8 and cfg.vocab_size == 128256  # model YAML over base
    assert cfg.steps == 300  # base kept where the model YAML is silent
    cfg = load_config([base_yml, "model_name=llama3-8b", "base_num_kv_heads=4", "learning_rate=1e-4"])
    assert cfg.base_num_kv_heads == 4 and cfg.learning_rate == 1e-4  # CLI over model YAML


def test_base_config_parent_and_relative_paths(tmp_path, base_yml):
    child = tmp_path / "child.yml"
    child.write_text(f"base_config: {base_yml}\nsteps: 7\n")
    cfg = load_config([str(child), "run_name=r"])
    assert cfg.steps == 7 and cfg.base_emb_dim == 256


def test_cli_parsing_of_types(base_yml):
    cfg = load_config(
        [
            base_yml,
            "scan_layers=false",
            "mlp_activations=[gelu]",
            "run_name=123",
            "learning_rate=2e-3",
            "steps=1e3",
        ]
    )
    assert cfg.scan_layers is False and cfg.mlp_activations == ["gelu"]
    assert cfg.run_name == "123" and cfg.learning_rate == 2e-3 and cfg.steps == 1000


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("lerning_rate=1", "unknown key 'lerning_rate' (command line); did you mean 'learning_rate'"),
        ("steps=abc", "steps='abc' (command line): expected int"),
        ("steps=1.5", "expected an integer"),
        ("scan_layers=maybe", "expected a boolean"),
        ("learning_rate=-1", "learning_rate=-1.0: expected a value >= 0"),
        ("attention=flsh", "did you mean 'flash'"),
        ("dtype=float64", "dtype='float64': expected one of"),
        ("base_num_kv_heads=3", "base_num_kv_heads=3: must divide base_num_query_heads=4"),
        ("decoder_block=lama2", "did you mean 'llama2'"),
        ("model_name=llama9", "no file configs/models/llama9.yml"),
        ("mlp_activations=[swish]", "mlp_activations contains 'swish'"),
        ("logical_axis_rules=[[embed,fdsp]]", "mesh axis 'fdsp' is not one of"),
        ("stepz", "expected key=value"),
    ],
)
def test_user_errors_are_one_line(base_yml, override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config([base_yml, override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_yaml_names_file(tmp_path, base_yml):
    bad = tmp_path / "bad.yml"
    bad.write_text(f"base_config: {base_yml}\nmax_steps: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'max_steps' \(.*bad.yml\)"):
        load_config([str(bad)])


def test_every_shipped_model_yaml_validates(base_yml):
    for name in available_models():
        cfg = load_config([base_yml, f"model_name={name}"])
        assert cfg.model_name == name


def test_every_shipped_top_level_yaml_validates():
    """configs/*.yml (base.yml and the post-training configs such as sft.yml) load as they ship."""
    shipped = sorted(glob.glob(os.path.join(paths.REPO_ROOT, "configs", "*.yml")))
    assert "sft.yml" in [os.path.basename(p) for p in shipped]
    for path in shipped:
        cfg = load_config([path, "run_name=x"])
        if os.path.basename(path) == "sft.yml":
            assert cfg.use_sft and cfg.dataset_type == "hf" and cfg.train_data_columns == "messages"


def test_save_config_round_trip(tmp_path, base_yml):
    cfg = load_config([base_yml, "run_name=r", "steps=9"])
    path = tmp_path / "r" / "config.yml"
    save_config(cfg, str(path))
    with open(path, encoding="utf-8") as f:
        saved = yaml.safe_load(f)
    assert saved == dataclasses.asdict(cfg)


def _run_train(*args, cwd):
    env = dict(os.environ, PYTHONPATH=paths.REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "MaxText.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    # Run from an unrelated directory: configs/ must resolve against the repo.
    proc = _run_train("configs/base.yml", "learning_rat=0.1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "config error: unknown key 'learning_rat' (command line); did you mean 'learning_rate'"
    )


def test_mesh_product_mismatch_exits_2(tmp_path):
    proc = _run_train(
        "configs/base.yml", "ici_fsdp_parallelism=3", "ici_data_parallelism=1", "dataset_type=synthetic",
        f"base_output_directory={tmp_path}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "ici_fsdp_parallelism=3: product 3 != 8 devices per slice" in proc.stderr
