"""Mixtral, Qwen3-MoE (also with a dense first layer) and DeepSeek V2/V3 beside their Hugging Face models: the expert-major layout,
decode == forward, the per-expert mapping's round trip and a missing expert named, unscanned stacks, training
with the load-balance loss in the loss and the metrics. Logits, greedy generation, the export into
transformers and a training step through the real conversion path are test_hf_parity's (its MoE rows are
helpers.MOE_HF_MODELS).

Tiny models with their MoE features on: 8 experts, top-2, renormalised top-k (Mixtral always; Qwen3 with
norm_topk_prob), Mixtral's sliding window shorter than the sequence, Qwen3's qk-norm, DeepSeek's MLA, YaRN,
groups, a shared expert, V3's router bias and a dense first layer. The Hugging Face tensors come from
save_pretrained, i.e. the per-expert layout of published checkpoints (transformers fuses experts in memory
only).
"""

import functools
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# pylint: disable=wrong-import-position
from safetensors.numpy import load_file

from MaxText.config import load_config
from MaxText.models import hf_mappings
from MaxText.tests.helpers import BASE_YML, FAMILY_COMMON, MOE_HF_COMMON, MOE_HF_MODELS, TINY
from MaxText.tests.helpers import (
    decode_matches_forward,
    family_ids,
    family_model_config,
    full_logits,
    hf_logits,
)
from MaxText.tests.helpers import randomize_router_bias
from MaxText import input_pipeline
from MaxText.parallel import mesh as mesh_lib
from MaxText.training import train_step as train_step_lib
from MaxText.training import trainer
from MaxText.training.loss import moe_load_balance_loss
from MaxText.training.metrics import step_line
from MaxText.models.transformer import make_model
from MaxText.training.train_state import init_state

FAMILIES = list(MOE_HF_MODELS)


def _cli(keys: dict) -> list:
    def text(v):
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list):
            return "[" + ",".join(map(str, v)) + "]"
        return str(v)

    return [f"{k}={text(v)}" for k, v in keys.items()]


@functools.lru_cache(maxsize=None)
def hf_case(family: str, tmp_root: str = "/tmp/maxtext_test_moe_families"):
    """(HF model, saved dir, its per-expert tensors, our ModelConfig, model, params, HF logits)."""
    config_cls, model_cls, extra = MOE_HF_MODELS[family]
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(
        getattr(transformers, config_cls)(**{**FAMILY_COMMON, **MOE_HF_COMMON, **extra})
    ).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
        randomize_router_bias(hf)
    path = os.path.join(tmp_root, family)
    shutil.rmtree(path, ignore_errors=True)
    hf.save_pretrained(path)
    state = load_file(os.path.join(path, "model.safetensors"))
    cfg = family_model_config(hf_mappings.hf_config_to_keys(hf.config.to_dict()))
    params = hf_mappings.hf_to_params(cfg.decoder_block, state, cfg)
    return hf, path, state, cfg, make_model(cfg), params, hf_logits(hf, family_ids())


def moe_stack_name(params) -> str:
    return "layers" if "layers" in params["decoder"] else "moe_layers"


@pytest.mark.parametrize("family", FAMILIES)
def test_experts_are_stacked_expert_major(family):
    """Logits, greedy tokens, the export and a training step against transformers, through the converter, are
    test_hf_parity's; here the layout: [E, layers, D, F], expert j of layer i at [j, i]."""
    _, _, state, cfg, _, params, _ = hf_case(family)
    assert cfg.num_experts == 8 and cfg.num_experts_per_tok == 2
    moe_stack = params["decoder"][moe_stack_name(params)]
    assert moe_stack["mlp"]["wi_0"].shape == (8, 2, 64, cfg.moe_mlp_dim)
    wo = next(
        m
        for m in hf_mappings.tensor_maps(cfg.decoder_block, cfg)
        if m.path[1:] == (moe_stack_name(params), "mlp", "wo")
    )
    name = wo.hf_names[1 * 8 + 5]  # unit 1, expert 5
    assert f"layers.{cfg.first_num_dense_layers + 1}." in name and ".experts.5." in name
    np.testing.assert_array_equal(moe_stack["mlp"]["wo"][5, 1], state[name].T)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_equals_forward(family):
    *_, cfg, model, params, _ = hf_case(family)
    decode_matches_forward(cfg, model, params)


@pytest.mark.parametrize("family", FAMILIES)
def test_per_expert_round_trip_is_exact_and_names_a_missing_expert(family):
    _, _, state, cfg, _, params, _ = hf_case(family)
    back = hf_mappings.params_to_hf(cfg.decoder_block, params, cfg)
    assert sorted(back) == sorted(state)
    for name, x in state.items():
        assert back[name].dtype == x.dtype
        np.testing.assert_array_equal(back[name], x)
    name = next(n for n in state if ".experts.3." in n)
    state = dict(state)  # the cached case's dict stays whole for the other tests
    del state[name]
    with pytest.raises(Exception, match=name.replace(".", r"\.")):
        hf_mappings.hf_to_params(cfg.decoder_block, state, cfg)


def test_unscanned_export_reads_each_expert_from_its_unit():
    """What maxtext_to_hf does with a scan_layers=false run: TensorMap.index(stacked=False) into unit u's
    leaf gives every per-expert tensor back."""
    _, _, state, cfg, _, _, _ = hf_case("deepseek3")
    params_u = hf_mappings.hf_to_params("deepseek3", state, cfg.replace(scan_layers=False))
    for m in hf_mappings.tensor_maps("deepseek3", cfg):
        per_unit = len(m.hf_names) // m.units
        for i, name in enumerate(m.hf_names):
            path = m.unscanned_path(i // per_unit) if m.stacked else m.path
            leaf = functools.reduce(lambda t, k: t[k], path, params_u)
            np.testing.assert_array_equal(
                m.to_hf(leaf[m.index(i, cfg.param_scan_axis, stacked=False)]), state[name]
            )


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_trains_with_the_load_balance_loss_logged(family):
    keys = hf_mappings.hf_config_to_keys(hf_case(family)[0].config.to_dict())
    cfg = load_config([BASE_YML, *TINY, "per_device_batch_size=2", "max_target_length=16", *_cli(keys)])
    s = trainer.build(cfg, jax.devices()[:1])
    p_train, _ = trainer.compile_steps(s)
    batch = next(input_pipeline.make_train_iterator(trainer.data_config(cfg, s.global_batch)))
    losses, logged_lb = [], []
    with mesh_lib.activate(s.mesh, s.rules):
        state = init_state(s.model, s.tx, cfg.init_weights_seed, s.shardings)
        # Before the first step donates the state: the model's own loss on this batch's real tokens.
        want_lb = _lb_loss(s.model, state.params, batch)
        for _ in range(3):
            state, metrics = p_train(state, trainer.to_device(s, batch))
            losses.append(float(metrics["loss"]))
            logged_lb.append(float(metrics["moe_lb_loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    # The step reports the per-token mean of what the layers sowed, from the params it was given.
    np.testing.assert_allclose(logged_lb[0], want_lb, rtol=1e-5)
    record = trainer._step_record(s, 3, metrics, 1.0, 32.0)  # pylint: disable=protected-access
    line = step_line(record, 3, 0.0)
    assert "moe_lb " in line


def test_loss_adds_the_weighted_load_balance_loss_over_real_tokens():
    hf, *_, model, params, _ = hf_case("mixtral")
    ids = jnp.asarray(family_ids(3, (2, 16)))
    seg = jnp.ones_like(ids).at[1, 12:].set(0)  # trailing padding: no loss, no routing statistics

    @jax.jit
    def sums(p, ids):
        batch = dict(
            inputs=ids,
            inputs_position=jnp.broadcast_to(jnp.arange(16), (2, 16)),
            inputs_segmentation=seg,
            targets=jnp.roll(ids, -1, axis=1),
            targets_segmentation=seg,
        )
        return train_step_lib._sums(model, p, batch, jax.random.key(0), 0.0, 0.5)  # pylint: disable=W0212

    s1 = sums(params, ids)
    assert float(s1["tokens"]) == 28
    np.testing.assert_allclose(float(s1["loss"] - s1["ce"]), 0.5 * float(s1["moe_lb_loss"]), rtol=1e-5)
    # Against transformers' own router logits: padding must not count, as _reference_lb_loss excludes it.
    np.testing.assert_allclose(float(s1["moe_lb_loss"]) / 28, _reference_lb_loss(hf, ids, seg, 2), rtol=1e-5)
    s2 = sums(params, ids.at[1, 12:].set(ids[1, 12:] + 1))  # other padding tokens route elsewhere
    np.testing.assert_allclose(float(s2["moe_lb_loss"]), float(s1["moe_lb_loss"]), rtol=1e-6)


def _lb_loss(model, params, batch=None):
    """The load-balance loss our model sows for a batch (default: family_ids(), no padding)."""
    if batch is None:
        ids = jnp.asarray(family_ids())
        batch = dict(
            inputs=ids,
            inputs_position=jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape),
            inputs_segmentation=jnp.ones_like(ids),
        )
    _, variables = model.apply(
        {"params": params},
        jnp.asarray(batch["inputs"]),
        jnp.asarray(batch["inputs_position"]),
        jnp.asarray(batch["inputs_segmentation"]),
        "train",
        mutable=["intermediates"],
    )
    return float(moe_load_balance_loss(variables["intermediates"]))


def _reference_lb_loss(hf, ids, token_mask, top_k: int) -> float:
    """Switch loss E x sum_e f_e P_e per MoE layer from transformers' router logits over the real tokens
    (f_e: share of the top-k assignments to e, P_e: mean softmax probability of e), mean over layers."""
    with torch.no_grad():
        out = hf(torch.tensor(np.array(ids)), output_router_logits=True)
    real = np.asarray(token_mask, bool).reshape(-1)
    losses = []
    for logits in out.router_logits:
        probs = torch.softmax(logits.float(), dim=-1).numpy()[real]
        chosen = np.argsort(-probs, axis=-1)[:, :top_k]
        num_experts = probs.shape[-1]
        share = np.bincount(chosen.ravel(), minlength=num_experts) / chosen.size
        losses.append(num_experts * np.sum(share * probs.mean(axis=0)))
    return float(np.mean(losses))


@pytest.mark.slow
def test_unscanned_dense_and_moe_stacks_match_scanned():
    _, _, state, cfg, model, params, want = hf_case("deepseek3")
    cfg_u = cfg.replace(scan_layers=False)
    model_u = make_model(cfg_u)
    params_u = hf_mappings.hf_to_params("deepseek3", state, cfg_u)
    assert {"dense_layers_0", "moe_layers_0", "moe_layers_1"} == set(params_u["decoder"]) - {
        "decoder_norm",
        "logits_dense",
    }
    np.testing.assert_allclose(full_logits(model_u, params_u, family_ids()), want, atol=1e-4)
    np.testing.assert_allclose(_lb_loss(model_u, params_u), _lb_loss(model, params), rtol=1e-5)
