"""Memory policies: every remat_policy name keeps what it says and trains exactly like no remat."""

import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText.config import ConfigError, load_config, model_config
from MaxText.config.choices import RematPolicy
from MaxText.config.schema import REMAT_TENSORS

from MaxText.layers import remat
from MaxText.tests.helpers import BASE_YML, TINY
from MaxText.training import trainer
from MaxText.models.transformer import dummy_inputs, init_params_boxed, make_model
from MaxText.training.train_step import _grads_and_sums

REMAT_POLICIES = [p.value for p in RematPolicy]

CUSTOM = ["remat_policy=custom", "query_proj=device", "context=offload", "mlpwo=offload"]


def _model(overrides):
    return make_model(model_config(load_config([BASE_YML, *TINY, *overrides])))


def _batch(vocab: int):
    ids = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (2, 32)), jnp.int32)
    _, positions, segments = dummy_inputs(2, 32)
    return {
        "inputs": ids,
        "inputs_position": positions,
        "inputs_segmentation": segments,
        "targets": jnp.roll(ids, -1, axis=1),
        "targets_segmentation": segments,
    }


def test_policy_names_match_the_schema():
    assert set(REMAT_POLICIES) == set(remat.NAMES)
    assert set(remat.TENSORS) == set(REMAT_TENSORS)


def test_every_tensor_a_policy_names_is_tagged_by_the_layers():
    """The checkpoint names the policies refer to exist in the model's forward pass (a typo saves nothing)."""
    model = _model([])
    params = jax.eval_shape(lambda: init_params_boxed(model, jax.random.key(0)))
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, *dummy_inputs(1, 8), "train"))(
        jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), nn.unbox(params))
    )
    tagged = {str(e.params["name"]) for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "name"}
    assert set(REMAT_TENSORS) <= tagged, tagged


def _eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for sub in _sub(e):
            yield from _eqns(sub)


def _sub(eqn):
    for v in eqn.params.values():
        for j in v if isinstance(v, (list, tuple)) else [v]:
            if hasattr(j, "jaxpr") and hasattr(j.jaxpr, "eqns"):
                yield j.jaxpr
            elif hasattr(j, "eqns"):
                yield j


@pytest.mark.parametrize("name", [n for n in REMAT_POLICIES if n not in ("none", "custom")] + ["custom"])
def test_policy_saves_exactly_its_tensors(name, capsys):
    """jax.ad_checkpoint.print_saved_residuals lists the named activations each policy keeps for the backward pass
    (per-layer model, so the residuals are not hidden inside a scan)."""
    overrides = CUSTOM if name == "custom" else [f"remat_policy={name}"]
    model = _model(["scan_layers=false", *overrides])
    mcfg = model.config
    params = nn.unbox(jax.eval_shape(lambda: init_params_boxed(model, jax.random.key(0))))
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params)
    batch = _batch(mcfg.vocab_size)
    capsys.readouterr()
    jax.ad_checkpoint.print_saved_residuals(lambda p: _loss(model, p, batch), params)
    printed = capsys.readouterr().out
    named = set(re.findall(r" named '(\w+)'", printed))
    on_host = len(re.findall(r"<host>", printed))  # offloaded residuals print as f32<host>[...]
    saved, offloaded = remat.saved_and_offloaded(name, mcfg.remat_custom)
    # The MLP output only feeds the residual sum, whose backward needs no value: never a residual.
    assert named == set(saved) - {"mlpwo"}, (name, named)
    per_layer = sum(len(mcfg.mlp_activations) if t == "mlpwi" else 1 for t in set(offloaded) - {"mlpwo"})
    assert on_host == per_layer * mcfg.num_decoder_layers, (name, printed)


def _loss(model, params, batch):
    logits, _ = model.apply(
        {"params": params}, batch["inputs"], batch["inputs_position"], batch["inputs_segmentation"], "train"
    )
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])


@pytest.mark.slow
def test_all_policies_give_the_same_loss_and_grads():
    """One jitted function computes loss and grads under each kind of policy (recompute all, save some,
    offload some, a custom mix; one compile), compared with none. test_policy_saves_exactly_its_tensors
    shows each name keeps what it says; test_train covers full and save_dot_except_mlp through training."""
    names = ("none", "full", "save_dot_with_context_except_mlp", "minimal_offloaded")
    variants = {n: [f"remat_policy={n}"] for n in names}
    variants["custom"] = CUSTOM
    models = {n: _model(o) for n, o in variants.items()}
    ref_model = models["none"]
    params = nn.unbox(init_params_boxed(ref_model, jax.random.key(1)))
    batch = _batch(ref_model.config.vocab_size)

    @jax.jit
    def all_grads(p):
        return {n: _grads_and_sums(m, p, batch, jax.random.key(0), 0.0, 1) for n, m in models.items()}

    out = all_grads(params)
    ref_grads, ref_sums = out["none"]
    for name, (grads, sums) in out.items():
        np.testing.assert_allclose(sums["loss"], ref_sums["loss"], rtol=1e-6, err_msg=name)
        errors = [
            np.linalg.norm(a - b) / np.linalg.norm(b)
            for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))
        ]
        assert max(errors) < 1e-5, (name, max(errors))


def test_offload_refused_where_the_backend_has_no_host_memory():
    def device(*kinds):
        return types.SimpleNamespace(
            addressable_memories=lambda: [types.SimpleNamespace(kind=k) for k in kinds]
        )

    assert remat.host_offload_supported([device("device", "pinned_host")])
    assert not remat.host_offload_supported([device("device")])
    assert remat.host_offload_supported(jax.devices()) == all(
        "pinned_host" in {m.kind for m in d.addressable_memories()} for d in jax.devices()
    )
    assert remat.offloads("qkv_proj_offloaded") and not remat.offloads("save_qkv_proj")
    assert remat.offloads("custom", (("mlpwo", "offload"),)) and not remat.offloads("none")


def test_offload_refusal_is_a_config_error(monkeypatch):
    monkeypatch.setattr(remat, "host_offload_supported", lambda devices: False)
    with pytest.raises(ConfigError, match="remat_policy=minimal_offloaded: offloads activations"):
        trainer.build(load_config([BASE_YML, *TINY, "remat_policy=minimal_offloaded"]), jax.devices()[:1])


def test_per_tensor_keys_need_custom():
    with pytest.raises(ConfigError, match="mlpwo='offload': per-tensor placement needs remat_policy=custom"):
        load_config([BASE_YML, *TINY, "remat_policy=full", "mlpwo=offload"])
