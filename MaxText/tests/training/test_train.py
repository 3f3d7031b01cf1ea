"""Training invariants: sharded == single device, accumulation == large batch, scan == unscanned, outputs."""

import functools
import json
import os

import jax
import numpy as np
import pytest

from MaxText import input_pipeline
from MaxText.config import ConfigError, load_config, model_config
from MaxText.models.transformer import stack_layers, unstack_layers
from MaxText.parallel import mesh as mesh_lib
from MaxText.tests.helpers import BASE_YML, TINY, run_steps
from MaxText.training import flops, optimizers, schedules, trainer
from MaxText.training.metrics import MetricsWriter
from MaxText.training.train_state import init_state
from MaxText.training.train_step import _grads_and_sums


@pytest.fixture(scope="module")
def single_device_run():
    return run_steps(["per_device_batch_size=8"], num_devices=1)


@pytest.mark.parametrize(
    "mesh",
    [
        ["ici_data_parallelism=8", "ici_fsdp_parallelism=1"],
        ["ici_fsdp_parallelism=8"],
        ["ici_fsdp_parallelism=4", "ici_tensor_parallelism=2"],
        ["ici_data_parallelism=2", "ici_fsdp_parallelism=2", "ici_tensor_parallelism=2"],
        ["ici_fsdp_parallelism=4", "ici_tensor_sequence_parallelism=2"],
        ["ici_fsdp_parallelism=4", "ici_context_parallelism=2"],  # keys/values all-gathered along the length
    ],
    ids=["dp8", "fsdp8", "fsdp4_tp2", "dp2_fsdp2_tp2", "fsdp4_tsp2", "fsdp4_cp2"],
)
def test_sharded_loss_equals_single_device(single_device_run, mesh):
    ref, _ = single_device_run
    got, _ = run_steps(["per_device_batch_size=1", *mesh], num_devices=8)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert ref[-1] < ref[0]  # it actually trains


def test_params_are_sharded_over_fsdp():
    cfg = load_config(
        [BASE_YML, *TINY, "per_device_batch_size=1", "ici_fsdp_parallelism=4", "ici_tensor_parallelism=2"]
    )
    s = trainer.build(cfg, jax.devices())
    wq = s.shardings.params["decoder"]["layers"]["self_attention"]["query"]["kernel"]
    assert wq.spec[0] == "fsdp" and wq.spec[2] == "tensor"  # [embed, layers, q_heads, kv]
    assert tuple(s.shardings.params["token_embedder"]["embedding"].spec) == ("tensor", "fsdp")


def _grads(overrides, params=None):
    cfg = load_config([BASE_YML, *TINY, "per_device_batch_size=8", *overrides])
    s = trainer.build(cfg, jax.devices()[:1])
    batch = trainer.to_device(
        s, next(input_pipeline.make_train_iterator(trainer.data_config(cfg, s.global_batch)))
    )
    with mesh_lib.activate(s.mesh, s.rules):
        if params is None:
            params = init_state(s.model, s.tx, cfg.init_weights_seed, s.shardings).params
        fn = functools.partial(
            _grads_and_sums, s.model, z_loss=0.0, accumulation_steps=cfg.gradient_accumulation_steps
        )
        grads, sums = jax.jit(fn)(params, batch, jax.random.key(0))
    return params, jax.tree.map(lambda g: g / sums["tokens"], grads), sums


def test_gradient_accumulation_equals_large_batch(single_device_run):
    ref_losses, _ = single_device_run
    losses, _ = run_steps(["per_device_batch_size=8", "gradient_accumulation_steps=4"], num_devices=1)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    params, ref, ref_sums = _grads([])
    _, got, sums = _grads(["gradient_accumulation_steps=4"], params)
    assert float(sums["tokens"]) == float(ref_sums["tokens"])
    # Per-tensor relative error: elementwise checks would flag float32 summation-order noise on
    # near-cancelling entries; a real accumulation bug moves whole tensors by far more than 1e-5.
    errors = [
        np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref))
    ]
    print("max relative grad error", max(errors))
    assert max(errors) < 1e-5


def test_remat_and_flash_match(single_device_run):
    ref, _ = single_device_run
    for extra in (["remat_policy=full"], ["remat_policy=save_dot_except_mlp", "attention=flash"]):
        got, _ = run_steps(["per_device_batch_size=8", *extra], num_devices=1)
        np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=str(extra))


def test_unscanned_equals_scanned_on_the_same_params():
    params, ref, _ = _grads([])
    cfg = model_config(load_config([BASE_YML, *TINY]))
    unscanned = unstack_layers(params, cfg)
    assert "layers_1" in unscanned["decoder"] and "layers" not in unscanned["decoder"]
    _, got, _ = _grads(["scan_layers=false"], unscanned)
    got = stack_layers(got, cfg)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    back = stack_layers(unscanned, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))


def test_weight_decay_mask_and_schedule():
    params = {"layers": {"mlp": {"wo": {"kernel": 1}}, "norm": {"scale": 1}}, "dense": {"bias": 2}}
    assert optimizers.decay_mask(params) == {
        "layers": {"mlp": {"wo": {"kernel": True}}, "norm": {"scale": False}},
        "dense": {"bias": False},
    }
    cfg = load_config([BASE_YML, "steps=100", "warmup_steps_fraction=0.1", "learning_rate=1.0"])
    sched = schedules.learning_rate_schedule(cfg)
    assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0) and float(sched(100)) == pytest.approx(0.1)


def test_flops_formula():
    cfg = load_config([BASE_YML, "model_name=llama2-7b"])
    mc = model_config(cfg)
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008
    assert flops.matmul_params_per_layer(mc) == per_layer
    b, t = 2, 4096
    want = 6 * per_layer * 32 * b * t + 12 * b * (t * t / 2) * 32 * 128 * 32 + 6 * b * t * 4096 * 32000
    assert flops.train_flops_per_step(mc, b, t) == pytest.approx(want)
    assert flops.attended_pairs(10, 3) == 6 + 7 * 3  # rows 0..2 see 1..3 keys, the rest 3


def test_train_writes_metrics_config_and_tensorboard(tmp_path):
    cfg = load_config(
        [BASE_YML, *TINY, "per_device_batch_size=1", "steps=4", "log_period=2", "eval_interval=2",
         f"base_output_directory={tmp_path}", "run_name=m"]
    )  # fmt: skip
    assert trainer.train(cfg) == 0
    with open(tmp_path / "m" / "metrics.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in steps] == [2, 4] and [r["step"] for r in evals] == [2, 4]
    keys = {"step", "loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "tflops_per_device", "mfu"}
    assert keys <= set(steps[0])
    assert all(np.isfinite(r[k]) for r in steps for k in keys)
    assert os.listdir(tmp_path / "m" / "tensorboard")


def test_vocab_smaller_than_tokenizer_is_a_config_error(tmp_path):
    cfg = load_config([BASE_YML, *TINY, "dataset_type=builtin", f"base_output_directory={tmp_path}"])
    with pytest.raises(ConfigError, match=r"vocab_size 256 is smaller than the tokenizer's vocabulary 4096"):
        trainer.train(cfg)


def test_metrics_file_recovers_from_a_cut_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    writer = MetricsWriter(str(tmp_path))
    writer.write({"step": 2, "loss": 1.5})
    writer.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"step": 2, "loss": 1.5} and len(lines) == 3
