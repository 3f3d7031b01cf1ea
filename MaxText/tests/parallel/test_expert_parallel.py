"""Expert parallelism: MoE tokens reach experts sharded over the `expert` axis by all-to-all; the loss equals
the single-device run."""

import jax
import numpy as np
import pytest

from MaxText.config import ConfigError, load_config
from MaxText.layers import moe
from MaxText.parallel import mesh as mesh_lib
from MaxText.tests.helpers import BASE_YML, TINY, run_steps
from MaxText.training import trainer

MIXTRAL = ["decoder_block=mixtral", "num_experts=8", "num_experts_per_tok=2", "base_moe_mlp_dim=32",
           "norm_topk_prob=true"]  # fmt: skip
ACTS = ("silu", "linear")


@pytest.fixture(scope="module", name="single_device_moe")
def _single_device_moe():
    return run_steps(["per_device_batch_size=8", *MIXTRAL], num_devices=1)


@pytest.mark.parametrize(
    "mesh",
    [
        ["ici_expert_parallelism=4", "ici_fsdp_parallelism=2"],
        pytest.param(
            ["ici_expert_parallelism=2", "ici_data_parallelism=2", "ici_fsdp_parallelism=1",
             "ici_tensor_parallelism=2"],
            marks=pytest.mark.slow,  # about 100 s to compile on a cold cache
        ),
    ],
    ids=["ep4_fsdp2", "ep2_dp2_tp2"],
)  # fmt: skip
def test_expert_parallel_loss_equals_single_device(single_device_moe, mesh):
    ref, _ = single_device_moe
    got, _ = run_steps(["per_device_batch_size=1", *MIXTRAL, *mesh], num_devices=8)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert ref[-1] < ref[0]


@pytest.mark.slow
def test_all_to_all_path_matches_dropless_and_per_device_capacity():
    """The EP kernel alone on 8 devices (expert 4 x fsdp 2): all-to-all in the program, dropless equal to
    the single-program result, capacity dropping decided per device (each device's rows on their own)."""
    cfg = load_config([BASE_YML, *TINY, *MIXTRAL, "ici_expert_parallelism=4", "ici_fsdp_parallelism=2"])
    s = trainer.build(cfg, jax.devices())
    rng = np.random.default_rng(0)
    b, t, d, e, f, k = 8, 6, 16, 8, 12, 2
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    wi = [rng.normal(size=(e, d, f)).astype(np.float32) / 4 for _ in range(2)]
    wo = rng.normal(size=(e, f, d)).astype(np.float32) / 4
    weights, experts, _ = moe.route(x.reshape(-1, d) @ rng.normal(size=(d, e)), moe.RoutingConfig(e, k))
    weights, experts = weights.reshape(b, t, k), experts.reshape(b, t, k)
    hi = jax.lax.Precision.HIGHEST
    with mesh_lib.activate(s.mesh, s.rules):
        for factor in (0.0, 1.0):
            fn = jax.jit(lambda *a, cf=factor: moe.expert_parallel_experts(*a, ACTS, cf, hi))
            assert "all_to_all" in fn.lower(x, weights, experts, wi, wo).as_text()
            got = np.asarray(fn(x, weights, experts, wi, wo))
            if factor == 0.0:
                want = moe.dropless_experts(x.reshape(-1, d), weights.reshape(-1, k), experts.reshape(-1, k),
                                            wi, wo, ACTS, hi).reshape(b, t, d)  # fmt: skip
            else:  # batch rows are split 8 ways (fsdp x expert): one row per device
                want = np.stack([
                    moe.capacity_experts(x[i], weights[i], experts[i], wi, wo, ACTS, factor, hi) for i in range(b)
                ])  # fmt: skip
                assert not np.allclose(want, moe.dropless_experts(x.reshape(-1, d), weights.reshape(-1, k),
                    experts.reshape(-1, k), wi, wo, ACTS, hi).reshape(b, t, d), atol=1e-3)  # fmt: skip
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"capacity_factor={factor}")
        # Gradients through both all-to-alls and the weight all-gathers (Adam would hide a scale error).
        cot = rng.normal(size=(b, t, d)).astype(np.float32)

        def ep_loss(x, wi, wo):
            return (moe.expert_parallel_experts(x, weights, experts, wi, wo, ACTS, 0.0, hi) * cot).sum()

        def ref_loss(x, wi, wo):
            flat = [a.reshape(b * t, -1) for a in (x, weights, experts)]
            return (moe.dropless_experts(*flat, wi, wo, ACTS, hi).reshape(b, t, d) * cot).sum()

        got = jax.jit(jax.grad(ep_loss, argnums=(0, 1, 2)))(x, wi, wo)
        want = jax.grad(ref_loss, argnums=(0, 1, 2))(x, wi, wo)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_experts_must_divide_over_the_expert_axis():
    cfg = load_config([BASE_YML, *TINY, *MIXTRAL, "num_experts=6", "ici_expert_parallelism=4",
                       "ici_fsdp_parallelism=2"])  # fmt: skip
    with pytest.raises(ConfigError, match="num_experts=6: .*ici_expert_parallelism"):
        trainer.build(cfg, jax.devices())
