"""LoRA training on the one trainer: only the adapters train (the base stays bit-identical and holds no
optimizer state), checkpoints hold the adapters alone and resume bitwise, sharded (fsdp x tensor) equals
one device, scan_layers off trains alike, and QLoRA trains adapters on an int8 base."""

import contextlib
import io
import os

import jax
import numpy as np
import pytest

from MaxText.checkpoint import checkpointing, orbax_io
from MaxText.config import ConfigError, load_config, model_config
from MaxText.conversion import quantize
from MaxText.layers import lora
from MaxText.tests import helpers
from MaxText.training import flops, trainer

# Tiny adapters (rank 4 beside 32-wide layers) replicate a large share of this model; real ones do not.
LORA = [
    "lora_rank=4",
    "lora_alpha=8",
    "learning_rate=0.01",
    "warmup_steps_fraction=0",
    "sharding_tolerance=1",
]


@pytest.fixture(scope="module", name="base")
def base_fixture(tmp_path_factory):
    """(root directory, the step directory of a random tiny base model)."""
    root = tmp_path_factory.mktemp("lora")
    cfg = load_config([helpers.BASE_YML, *helpers.TINY])
    return root, helpers.save_random_params(str(root / "base"), cfg)


def _flat(tree) -> dict:
    return {
        "/".join(str(k.key) for k in p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.fixture(scope="module", name="trained")
def trained_fixture(base):
    """(root, base step, overrides, the losses and start-up output of a 4-step LoRA run named "full")."""
    root, base_step = base
    overrides = [*LORA, f"load_parameters_path={base_step}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        full = helpers.train_run(str(root), "full", 4, overrides)
    return root, base_step, overrides, full, out.getvalue()


def test_adapters_alone_train_save_and_resume_bitwise(trained):
    root, base_step, overrides, full, out = trained
    assert "trainable: 4,096 of 39,072 params" in out and "optimizer state 32.0 KiB" in out
    assert "full fine-tuning: 273.3 KiB" in out

    step_dir = os.path.join(root, "full", "checkpoints", "4")
    stored = orbax_io.leaf_metadata(os.path.join(step_dir, "state"))
    params = [k for k in stored if k[0] == "params"]
    assert params and all(lora.is_adapter("/".join(k)) for k in params)  # the base is not copied
    states = [k for k in stored if k[0] == "opt_state" and len(k) > 4]
    assert states and all(k[-1] in lora.PARAM_NAMES for k in states if k[-1] != "count")
    meta = checkpointing.read_meta(step_dir)
    assert meta["base_params"]["path"] == os.path.abspath(base_step)

    # The adapted model: the base's weights bit-identical, every adapter B moved off zero.
    cfg = load_config([helpers.BASE_YML, *helpers.TINY, *overrides])
    s = trainer.build(cfg)
    loaded = _flat(checkpointing.load_params(step_dir, checkpointing.abstract_with_shardings(
        s.abstract_state.params, s.shardings.params)))  # fmt: skip
    original = helpers.read_checkpoint_params(base_step)
    for path, value in loaded.items():
        if lora.is_adapter(path):
            assert path.endswith("lora_a") or np.abs(value).max() > 0, path
        else:
            np.testing.assert_array_equal(value, original[("params", *path.split("/"))], err_msg=path)

    helpers.fork_run(str(root), "full", 2, "resumed")
    resumed = helpers.train_run(str(root), "resumed", 4, overrides)
    assert resumed == full[2:]


def test_sharded_and_accumulated_lora_equal_one_device(base):
    _, base_step = base
    overrides = [*LORA, f"load_parameters_path={base_step}", "per_device_batch_size=1"]
    one, _ = helpers.run_steps(overrides + ["per_device_batch_size=8"], num_devices=1, steps=3)
    sharded, _ = helpers.run_steps(
        overrides + ["ici_fsdp_parallelism=4", "ici_tensor_parallelism=2"], num_devices=8, steps=3
    )
    np.testing.assert_allclose(sharded, one, rtol=2e-5)
    # Microbatches differentiate the adapters alone, as the whole batch does.
    accumulated, _ = helpers.run_steps(
        overrides + ["per_device_batch_size=8", "gradient_accumulation_steps=2"], num_devices=1, steps=3
    )
    np.testing.assert_allclose(accumulated, one, rtol=2e-5)


def test_a_lora_run_resumes_with_scan_layers_off(trained):
    """The adapter checkpoint converts to per-layer params and trains on as the scanned run did."""
    root, _, overrides, full, _ = trained
    helpers.fork_run(str(root), "full", 2, "unscanned")
    unscanned = helpers.train_run(str(root), "unscanned", 4, overrides + ["scan_layers=false"])
    np.testing.assert_allclose(unscanned, full[2:], rtol=2e-5)


def test_qlora_trains_adapters_on_an_int8_base(base):
    root, base_step = base
    quantized = str(root / "int8")
    quantize.quantize_checkpoint(
        [helpers.BASE_YML, *helpers.TINY, f"load_parameters_path={base_step}", "quantization=int8w",
         f"save_quantized_params_path={quantized}"],
        log=helpers.quiet,
    )  # fmt: skip
    overrides = [
        *LORA,
        f"load_parameters_path={quantized}",
        "quantization=int8w",
        "checkpoint_is_quantized=true",
    ]
    losses = helpers.train_run(str(root), "qlora", 2, overrides + ["checkpoint_period=100"])
    assert np.isfinite(losses).all()
    cfg = load_config([helpers.BASE_YML, *helpers.TINY, *overrides])
    s = trainer.build(cfg)
    params = _flat(checkpointing.load_params(str(root / "qlora"), checkpointing.abstract_with_shardings(
        s.abstract_state.params, s.shardings.params)))  # fmt: skip
    stored = helpers.read_checkpoint_params(quantized)
    kernels = [p for p in params if p.endswith("/kernel") and "decoder/layers" in p]
    assert kernels and all(params[p].dtype == np.int8 for p in kernels)
    for p in kernels:  # the int8 base is untouched, the float32 adapters moved
        np.testing.assert_array_equal(params[p], stored[("params", *p.split("/"))])
    assert all(params[p].dtype == np.float32 for p in params if lora.is_adapter(p))
    assert max(float(np.abs(params[p]).max()) for p in params if p.endswith("lora_b")) > 0


def test_lora_refuses_a_run_without_a_base(base):
    with pytest.raises(ConfigError, match="lora_rank=4: adapters train on a base model"):
        trainer.build(load_config([helpers.BASE_YML, *helpers.TINY, "lora_rank=4"]))
    with pytest.raises(ConfigError, match="lora_target_modules contains 'q_prj'.*did you mean 'q_proj'"):
        load_config([helpers.BASE_YML, *helpers.TINY, "lora_rank=4", "lora_target_modules=[q_prj,v_proj]"])
    del base


def test_lora_flops_skip_the_frozen_weight_gradients(base):
    """A frozen weight costs forward + input gradient (4 per parameter and token), an adapter all 6."""
    _, base_step = base
    full = trainer.build(load_config([helpers.BASE_YML, *helpers.TINY]))
    adapted = trainer.build(
        load_config([helpers.BASE_YML, *helpers.TINY, *LORA, f"load_parameters_path={base_step}"])
    )
    mcfg = model_config(adapted.cfg)
    tokens = adapted.global_batch * adapted.cfg.max_target_length
    leaves = jax.tree_util.tree_flatten_with_path(adapted.abstract_state.params)[0]
    adapter = sum(x.size for p, x in leaves if lora.is_adapter("/".join(str(k.key) for k in p)))
    assert adapter == 4096
    frozen = flops.matmul_params_all_layers(mcfg) + mcfg.emb_dim * mcfg.vocab_size
    assert adapted.flops_per_step == pytest.approx(
        full.flops_per_step - 2 * frozen * tokens + 6 * adapter * tokens
    )
    assert adapted.flops_per_step < full.flops_per_step
