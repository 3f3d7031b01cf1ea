"""Attention kernels behind one interface: the Pallas flash kernel (interpret=True), splash (interpret=True)
and the Pallas paged decode kernel against dot_product, forward and gradient; the selection table; the
refusals. Pallas's interpreter is slow, so shapes are tiny and each kernel compiles once per test."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText import kernels
from MaxText.config import ConfigError, load_config
from MaxText.inference.kv_cache import init_paged_cache
from MaxText.inference.page_manager import PageManager
from MaxText.kernels import AttentionSpec, dot_product_attention
from MaxText.kernels import plan as plan_lib
from MaxText.kernels.flash_pallas import flash_attention_pallas
from MaxText.kernels.paged_pallas import paged_attention_pallas
from MaxText.kernels.splash import splash_attention
from MaxText.models.transformer import init_params_boxed, make_model
from MaxText.tests.helpers import (
    BASE_YML,
    PAGE_SIZE,
    PAGED_B,
    PAGED_LENGTHS,
    PAGED_T,
    decode_ids,
    full_logits,
)
from MaxText.tests.helpers import paged_cache_for, prefill_then_decode, tiny_model

HIGHEST = jax.lax.Precision.HIGHEST
TOL = dict(atol=1e-5, rtol=1e-5)  # float32 at these sizes; both sides accumulate in float32

# Two rows: one sequence, and a packed row (segments 1 and 2, positions restarting) ending in padding
# (segment 0). With 16-blocks, row 0's first query block and last key block are fully masked (skipped).
SEG = np.array([[1] * 20, [1] * 12 + [2] * 5 + [0] * 3], np.int32)
POS = np.array([list(range(20)), list(range(12)) + list(range(5)) + [0] * 3], np.int32)


def _qkv(n=4, kh=2, h=8, seed=0):
    rng = np.random.default_rng(seed)
    b, t = SEG.shape
    return tuple(
        jnp.asarray(rng.normal(size=shape), jnp.float32)
        for shape in ((b, t, n, h), (b, t, kh, h), (b, t, kh, h))
    )


def _value_and_grads(kernel, spec, weight):
    """Jitted (output, d sum(weight * output) / d(q, k, v)) of (q, k, v, positions, segment ids): one
    compilation covers the forward pass and the gradient."""

    def out(q, k, v, pos, seg):
        return kernel(q, k, v, pos, pos, seg, seg, spec)

    def loss(q, k, v, pos, seg):
        return jnp.sum(out(q, k, v, pos, seg) * weight)

    return jax.jit(lambda *a: (out(*a), jax.grad(loss, argnums=(0, 1, 2))(*a)))


def _assert_parity(kernel, spec, rows_to_compare):
    """Returns the kernel's jitted function for further checks."""
    q, k, v = _qkv()
    # Weights differ per element so the gradient sees every output, not just their sum; rows left out
    # of the comparison get weight 0 so their (unspecified) outputs reach no gradient.
    weight = rows_to_compare[:, :, None, None] * jnp.linspace(-1.0, 1.0, q[0].size).reshape(q.shape[1:])
    fn = _value_and_grads(kernel, spec, weight)
    got, got_grads = fn(q, k, v, POS, SEG)
    want, want_grads = _value_and_grads(dot_product_attention, spec, weight)(q, k, v, POS, SEG)
    mask = np.broadcast_to(rows_to_compare[:, :, None, None], got.shape)
    np.testing.assert_allclose(np.where(mask, got, 0), np.where(mask, want, 0), **TOL)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, **TOL)
    return fn


def _flash_pallas(q, k, v, q_pos, k_pos, q_seg, k_seg, spec):
    return flash_attention_pallas(q, k, v, q_pos, k_pos, q_seg, k_seg, spec, interpret=True)


def _splash(q, k, v, q_pos, k_pos, q_seg, k_seg, spec):
    return splash_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec, interpret=True)


def test_flash_pallas_matches_dot_product():
    """GQA (G = 2), packed segments, padding, sliding window and soft cap; T = 20 padded to two 16-blocks,
    H = 8 padded to 16. (The plain causal case is the same kernel with two branches off.)"""
    spec = AttentionSpec("flash", 0.3, 5, 2.0, HIGHEST, block_size=16)
    _assert_parity(_flash_pallas, spec, np.ones(SEG.shape, bool))


@pytest.mark.parametrize(
    "window,cap", [(5, 2.0), pytest.param(0, 0.0, marks=pytest.mark.slow)], ids=["local+softcap", "causal"]
)
def test_splash_matches_dot_product(window, cap):
    """Same inputs through JAX's splash kernel (T = 20 padded to one 128-block). Segment 0 is padding,
    whose outputs splash does not define (its mask follows token indices), so those rows are left out."""
    spec = AttentionSpec("splash", 0.3, window, cap, HIGHEST, block_size=128)
    fn = _assert_parity(_splash, spec, SEG != 0)
    # Positions that do not advance by one inside a segment: the index-built mask would be wrong -> NaN.
    skipped = POS.copy()
    skipped[0, 3] = 7
    assert np.isnan(np.asarray(fn(*_qkv(), skipped, SEG)[0])).all()


def test_splash_refuses_what_it_cannot_honour():
    q, k, v = _qkv()
    pos, seg = jnp.asarray(POS), jnp.asarray(SEG)
    spec = AttentionSpec("splash", 0.3, block_size=128)
    with pytest.raises(ValueError, match="attention=splash: attends among the same T tokens"):
        splash_attention(q, k[:, :5], v[:, :5], pos, pos[:, :5], seg, seg[:, :5], spec, interpret=True)
    with pytest.raises(ValueError, match="flash_block_size=64 must be a multiple of 128"):
        splash_attention(q, k, v, pos, pos, seg, seg, AttentionSpec("splash", block_size=64), interpret=True)


def test_flash_pallas_refuses_blocks_triton_cannot_tile():
    q, k, v = _qkv()
    pos, seg = jnp.asarray(POS), jnp.asarray(SEG)
    for block in (8, 24):
        with pytest.raises(ValueError, match=f"flash_block_size={block} must be a power of two >= 16"):
            flash_attention_pallas(
                q, k, v, pos, pos, seg, seg, AttentionSpec(block_size=block), interpret=True
            )


def test_pallas_kernels_lower_for_gpu_through_triton():
    """The compiled GPU path (interpret=False) lowers to Triton kernels for CUDA from this CPU machine:
    flash forward and backward, and the paged decode kernel. (Lowering only: no GPU runs it here.)"""
    b, t, n, kh, h = 1, 64, 4, 2, 64
    q, k = jnp.zeros((b, t, n, h)), jnp.zeros((b, t, kh, h))
    pos = jnp.zeros((b, t), jnp.int32)
    spec = AttentionSpec("flash", 0.125, 8, 30.0, block_size=32)

    def flash(q, k, v):
        return flash_attention_pallas(q, k, v, pos, pos, pos, pos, spec)

    def grads(q, k, v):
        return jax.grad(lambda *a: flash(*a).sum(), argnums=(0, 1, 2))(q, k, v)

    pool, table = jnp.zeros((6, 16, kh, h)), jnp.zeros((b, 3), jnp.int32)
    paged = functools.partial(paged_attention_pallas, spec=spec, interpret=False)
    for fn, args, kernels_expected in [
        (flash, (q, k, k), 1),
        (grads, (q, k, k), 3),  # the forward (residuals), dK/dV and dQ
        (paged, (q[:, :1], pool, pool, table, pos[:, :1]), 1),
    ]:
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("__gpu$xla.gpu.triton") == kernels_expected


def test_paged_kernel_decode_equals_dot_product_decode():
    """attention=paged: prefill (dot_product on CPU) then decode steps through the Pallas paged kernel
    (interpret=True), many rows of different lengths, equal to attention=dot_product over the same paged
    cache and to the full forward pass."""
    runs = {}
    for attention in ("dot_product", "paged"):
        cfg, model, params = tiny_model(
            f"attention={attention}", "kv_cache=paged", f"kv_page_size={PAGE_SIZE}"
        )
        manager = PageManager(num_pages=40, page_size=PAGE_SIZE, max_pages_per_request=4)
        manager.allocate("spacer", 5)  # rows start past page 1 and their pages interleave
        cache_for, _ = paged_cache_for(manager, init_paged_cache(cfg, 40, PAGE_SIZE))
        runs[attention] = prefill_then_decode(
            model, params, decode_ids(PAGED_B, PAGED_T), cache_for, PAGED_T - int(PAGED_LENGTHS.min())
        )[:2]
    want = full_logits(model, params, decode_ids(PAGED_B, PAGED_T))
    (ref_last, ref_steps), (last, steps) = runs["dot_product"], runs["paged"]
    np.testing.assert_array_equal(last, ref_last)  # prefill runs dot_product on CPU for both
    # Decode: online softmax over pages vs one softmax; float32 rounding differs as between decode and forward.
    for i in range(steps.shape[0]):
        for b in range(PAGED_B):
            if PAGED_LENGTHS[b] + i < PAGED_T:  # rows still inside the reference sequence
                np.testing.assert_allclose(steps[i, b], ref_steps[i, b], atol=2e-5)
                np.testing.assert_allclose(steps[i, b], want[b, PAGED_LENGTHS[b] + i], atol=2e-5)


@pytest.mark.slow
def test_model_with_splash_equals_dot_product():
    """attention=splash wired through the model (scan, GQA, RoPE, packed rows): the same logits as
    attention=dot_product with the same weights."""
    ids = decode_ids(2, PAGED_T)
    seg = jnp.asarray([[1] * 9 + [2] * 5, [1] * PAGED_T])
    pos = jnp.asarray([list(range(9)) + list(range(5)), list(range(PAGED_T))])
    logits = {}
    for attention in ("dot_product", "splash"):
        _, model, params = tiny_model(f"attention={attention}")
        logits[attention] = model.apply({"params": params}, ids, pos, seg, "train")[0]
    np.testing.assert_allclose(logits["splash"], logits["dot_product"], atol=2e-5)


def test_kernel_plan_table():
    """The table in docs/serving.md ("Attention kernels") and kernels/plan.py."""
    short, long_ = plan_lib.CPU_FLASH_MIN_LENGTH - 1, plan_lib.CPU_FLASH_MIN_LENGTH
    flash = {"cpu": "flash", "gpu": "flash_pallas", "tpu": "flash"}
    for on in plan_lib.TARGETS:
        for name in ("dot_product", "flash", "splash"):
            p = plan_lib.plan_for(name, on)
            want = flash[on] if name == "flash" else name
            assert [p.attend_kernel(short), p.attend_kernel(long_)] == [want, want]
            assert p.decode_kernel("paged") == "paged_reference"
        for name in kernels.ATTENTION_CHOICES:
            p = plan_lib.plan_for(name, on)
            assert [p.decode_kernel(layout) for layout in ("contiguous", "quantized", "latent")] == [
                "dot_product", "dot_product", "absorbed"
            ]  # fmt: skip
            assert p.decode_kernel("quantized_paged") == "paged_reference"
            assert p.decode_kernel("paged", tokens=2) == "paged_reference"
            assert p.dot == ("cpu" if on == "cpu" else "xla") and p.target == on
        assert plan_lib.plan_for("paged", on).decode_kernel("paged") == "paged"
    for name in ("autoselected", "paged"):
        cpu, gpu, tpu = (plan_lib.plan_for(name, on) for on in ("cpu", "gpu", "tpu"))
        assert [cpu.attend_kernel(short), cpu.attend_kernel(long_)] == ["dot_product", "flash"]
        assert [gpu.attend_kernel(short), tpu.attend_kernel(long_)] == ["flash_pallas", "splash"]
    auto = [plan_lib.plan_for("autoselected", on).decode_kernel("paged") for on in ("cpu", "gpu", "tpu")]
    assert auto == ["paged", "paged", "paged_reference"]
    interpret = {
        on: [plan_lib.plan_for("autoselected", on).interpret(k) for k in ("splash", "paged")]
        for on in ("cpu", "gpu", "tpu")
    }
    assert interpret == {"cpu": [True, True], "gpu": [True, False], "tpu": [False, True]}
    assert plan_lib.platform_of() == "cpu"
    with pytest.raises(ValueError, match="attention kernel 'autoselected': expected one of"):
        kernels.attention(
            *[jnp.zeros((1, 1, 1, 4))] * 3, *[jnp.zeros((1, 1), jnp.int32)] * 4, AttentionSpec("autoselected")
        )


def test_model_layers_read_the_plan_not_the_platform(monkeypatch):
    """make_model plans once for its target; a GPU target's model traces the Pallas flash kernel and the plain
    dot even on this CPU host (shapes only, kernels replaced by recorders)."""
    seen, cfg = [], tiny_model()[0]
    for name in ("dot_product", "flash", "flash_pallas", "splash"):
        monkeypatch.setitem(kernels.KERNELS, name, lambda q, *a, name=name: seen.append(name) or q)
    monkeypatch.setattr(jax, "default_backend", lambda: "asked")  # nobody below make_model may ask
    for target, want in (("gpu", "flash_pallas"), ("tpu", "splash"), ("cpu", "dot_product")):
        model = make_model(cfg.replace(attention="autoselected"), target)
        assert model.config.kernel_plan == plan_lib.plan_for("autoselected", target)
        seen.clear()
        jax.eval_shape(lambda m=model: init_params_boxed(m, jax.random.key(0)))
        assert set(seen) == {want}, (target, seen)


@pytest.mark.parametrize(
    "on, attention, tokens, called",
    [
        ("cpu", "paged", 1, "pallas_interpret"),
        ("cpu", "autoselected", 1, "pallas_interpret"),
        ("gpu", "paged", 1, "pallas_compiled"),
        ("tpu", "autoselected", 1, "reference"),
        ("cpu", "dot_product", 1, "reference"),
        ("cpu", "paged", 2, "reference"),  # the Pallas kernel takes one query per row
    ],
)
def test_paged_dispatch_calls_the_selected_kernel(monkeypatch, on, attention, tokens, called):
    seen = []

    def pallas(q, *args, interpret):
        del args
        seen.append("pallas_interpret" if interpret else "pallas_compiled")
        return q

    monkeypatch.setattr(kernels, "paged_attention_pallas", pallas)
    monkeypatch.setattr(kernels, "paged_attention_reference", lambda q, *a: seen.append("reference") or q)
    plan = plan_lib.plan_for(attention, on)
    kernel = plan.decode_kernel("paged", tokens)
    q = jnp.zeros((1, tokens, 2, 4))
    kernels.paged_attention(
        q, None, None, None, None, AttentionSpec(kernel, interpret=plan.interpret(kernel))
    )
    assert seen == [called]


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["attention=paged"], "attention='paged': the paged decode kernel reads a paged KV cache, but "
                               "kv_cache='contiguous'; expected kv_cache=paged"),
        (["attention=splash", "flash_block_size=64"], "flash_block_size=64: attention='splash' tiles by 128"),
        (["attention=splsh"], "did you mean 'splash'"),
    ],
)  # fmt: skip
def test_config_refuses_impossible_kernel_settings(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config([BASE_YML, *overrides])
    assert fragment in str(e.value) and "\n" not in str(e.value)
    load_config([BASE_YML, "attention=paged", "kv_cache=paged"])  # the defined combination loads
