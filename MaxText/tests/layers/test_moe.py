"""The MoE layer against plain references: routing variants against a per-token NumPy loop, the dropless
ragged_dot path (forward and gradient) and capacity dropping against a per-expert jnp loop, and the
load-balance loss reaching the training loss and metrics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import model_info
from MaxText.config import load_config, model_config
from MaxText.layers import moe
from MaxText.layers.linears import ACTIVATIONS
from MaxText.tests.helpers import BASE_YML
from MaxText.training import flops

N, D, F, E = 24, 8, 12, 8
ACTS = ("silu", "linear")


def _weights(seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    wi = [jax.random.normal(k[i], (E, D, F)) / math.sqrt(D) for i in range(2)]
    wo = jax.random.normal(k[2], (E, F, D)) / math.sqrt(F)
    x = jax.random.normal(k[3], (N, D))
    return x, wi, wo


def _expert(x, wi, wo, e):
    h = ACTIVATIONS[ACTS[0]](x @ wi[0][e]) * (x @ wi[1][e])
    return h @ wo[e]


def per_expert_loop(x, weights, experts, wi, wo, keep=None):
    """sum_k weights[n, k] expert_{experts[n, k]}(x[n]): every expert on every token, masked (pure jnp).
    keep [N, K] (optional): assignments that count."""
    out = jnp.zeros_like(x)
    for e in range(E):
        sel = experts == e if keep is None else (experts == e) & keep
        w = jnp.sum(jnp.where(sel, weights, 0.0), axis=-1)
        out = out + w[:, None] * _expert(x, wi, wo, e)
    return out


def _routing(x, k=2, seed=1):
    logits = x @ jax.random.normal(jax.random.key(seed), (D, E))
    return moe.route(logits, moe.RoutingConfig(E, k, norm_topk_prob=True))[:2]


def test_dropless_matches_per_expert_loop_forward_and_gradient():
    x, wi, wo = _weights()
    gate = jax.random.normal(jax.random.key(1), (D, E))
    rc = moe.RoutingConfig(E, 2, norm_topk_prob=True)

    def loss(fn, x, wi, wo, gate):
        weights, experts, _ = moe.route(x @ gate, rc)
        out = fn(x, weights, experts, wi, wo)
        return jnp.sum(out * jnp.cos(out)), out

    def fast(*args):
        return moe.dropless_experts(*args, ACTS, jax.lax.Precision.HIGHEST)

    (v1, out1), g1 = jax.value_and_grad(loss, argnums=(1, 2, 3, 4), has_aux=True)(fast, x, wi, wo, gate)
    (v2, out2), g2 = jax.value_and_grad(loss, argnums=(1, 2, 3, 4), has_aux=True)(
        per_expert_loop, x, wi, wo, gate
    )
    _, experts = _routing(x)
    assert len(np.unique(np.asarray(experts))) >= 6  # most experts get tokens, some several
    np.testing.assert_allclose(out1, out2, atol=1e-5)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert float(jnp.abs(g1[3]).max()) > 1e-3  # the router gets a gradient through the weights


def _reference_slots(experts, cap):
    """Per (token, choice): kept or dropped, by a Python loop over choices then tokens."""
    n, k = experts.shape
    used = np.zeros(E, int)
    keep = np.zeros((n, k), bool)
    for j in range(k):
        for i in range(n):
            e = experts[i, j]
            keep[i, j] = used[e] < cap
            used[e] += 1
    return keep


@pytest.mark.parametrize("factor", [0.5, 1.0, 8.0])
def test_capacity_drops_overflow_in_choice_major_order(factor):
    x, wi, wo = _weights(2)
    weights, experts = _routing(x, seed=3)
    cap = moe.capacity(N * 2, E, factor)
    keep = _reference_slots(np.asarray(experts), cap)
    got = moe.capacity_experts(x, weights, experts, wi, wo, ACTS, factor, jax.lax.Precision.HIGHEST)
    want = per_expert_loop(x, weights, experts, wi, wo, jnp.asarray(keep))
    np.testing.assert_allclose(got, want, atol=1e-5)
    if factor == 8.0:  # room for everything: dropless
        assert keep.all()
        np.testing.assert_allclose(got, moe.dropless_experts(x, weights, experts, wi, wo, ACTS), atol=1e-5)
    else:
        assert not keep.all()


def _np_route(logits, bias, rc):
    """One token at a time, the published recipes (Mixtral/Qwen3, DeepSeek V2 and V3)."""
    n = logits.shape[0]
    weights, experts = np.zeros((n, rc.top_k)), np.zeros((n, rc.top_k), int)
    per = E // rc.n_group
    for i in range(n):
        z = logits[i].astype(np.float64)
        s = (
            np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            if rc.score_func == "softmax"
            else 1 / (1 + np.exp(-z))
        )
        c = s + bias
        groups = c.reshape(rc.n_group, per)
        gs = groups.max(-1) if rc.group_score == "max" else np.sort(groups, -1)[:, -2:].sum(-1)
        allowed = np.zeros(E, bool)
        for g in np.argsort(-gs)[: rc.topk_group]:
            allowed[g * per : (g + 1) * per] = True
        top = np.argsort(-np.where(allowed, c, -np.inf))[: rc.top_k]
        w = s[top]
        if rc.norm_topk_prob:
            w = w / w.sum()
        weights[i], experts[i] = w * rc.routed_scaling_factor, top
    return weights, experts


ROUTINGS = {
    "mixtral": moe.RoutingConfig(E, 2, "softmax", norm_topk_prob=True),
    "qwen3_unnormalised": moe.RoutingConfig(E, 3, "softmax"),
    "deepseek2_groups": moe.RoutingConfig(
        E, 3, "softmax", n_group=4, topk_group=2, routed_scaling_factor=16.0
    ),
    "deepseek3": moe.RoutingConfig(
        E, 3, "sigmoid", True, n_group=4, topk_group=2, group_score="top2_sum", routed_scaling_factor=2.5
    ),
}


@pytest.mark.parametrize("name", list(ROUTINGS))
def test_routing_variants_match_numpy(name):
    rc = ROUTINGS[name]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, E)).astype(np.float32)
    bias = rng.normal(size=E).astype(np.float32) if rc.score_func == "sigmoid" else np.zeros(E, np.float32)
    w, ex, _ = moe.route(jnp.asarray(logits), rc, jnp.asarray(bias) if rc.score_func == "sigmoid" else None)
    w_ref, ex_ref = _np_route(logits, bias, rc)
    order, order_ref = np.argsort(ex, -1), np.argsort(ex_ref, -1)
    np.testing.assert_array_equal(
        np.take_along_axis(np.asarray(ex), order, -1), np.take_along_axis(ex_ref, order_ref, -1)
    )
    np.testing.assert_allclose(
        np.take_along_axis(np.asarray(w), order, -1), np.take_along_axis(w_ref, order_ref, -1), rtol=1e-5
    )
    if rc.n_group > 1:  # the group limit binds: some token's best experts overall lie outside its groups
        free, _ = _np_route(logits, bias, moe.RoutingConfig(E, rc.top_k, rc.score_func, rc.norm_topk_prob))
        assert not np.allclose(free, w_ref)


def test_load_balance_loss_is_one_when_balanced_and_ignores_padding():
    e = 4
    experts = jnp.array([[0], [1], [2], [3], [0]])
    scores = jnp.full((5, e), 0.25)
    mask = jnp.array([True, True, True, True, False])
    np.testing.assert_allclose(moe.load_balance_loss(scores, experts, mask, "softmax"), 1.0, rtol=1e-6)
    skewed = jnp.array([[0], [0], [0], [0], [1]])
    peaked = jnp.tile(jnp.array([[0.7, 0.1, 0.1, 0.1]]), (5, 1))
    assert float(moe.load_balance_loss(peaked, skewed, mask, "softmax")) == pytest.approx(4 * 0.7)


@pytest.mark.parametrize(
    "name, layers, d, f, e, k",
    [("mixtral-8x7b", 32, 4096, 14336, 8, 2), ("qwen3-30b-a3b", 48, 2048, 768, 128, 8)],
)
def test_active_params_and_flops_count_the_chosen_experts(name, layers, d, f, e, k):
    cfg = model_config(load_config([BASE_YML, "run_name=t", f"model_name={name}"]))
    info = model_info.model_info(cfg, 4096)
    idle = layers * (e - k) * 3 * d * f
    assert info["active_params"] == info["total_params"] - idle
    dense_equivalent = cfg.replace(num_experts_per_tok=e)  # every expert active: total matmul params
    more = flops.train_flops_per_step(dense_equivalent, 1, 4096) - flops.train_flops_per_step(cfg, 1, 4096)
    assert more == 6 * 4096 * idle
