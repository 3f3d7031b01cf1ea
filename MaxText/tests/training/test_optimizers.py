"""Optimizers, parameter groups, schedules and the stability wrappers, each against optax or the formula."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from optax import contrib

from MaxText.config import ConfigError, load_config
from MaxText.checkpoint import checkpointing
from MaxText.conversion import maxtext_to_hf
from MaxText.tests.helpers import BASE_YML, TINY, fork_run, quiet, safetensors_tensors, train_run
from MaxText.training import opt_wrappers, optimizers, schedules, trainer

TOL = 1e-6


def _setup(*overrides, devices=1):
    cfg = load_config([BASE_YML, *TINY, "per_device_batch_size=1", *overrides])
    return cfg, trainer.build(cfg, jax.devices()[:devices])


def _params_and_grads(s, seed=0):
    """Random params and three random gradients shaped like the model's (float32, host)."""
    leaves, tree = jax.tree.flatten(s.abstract_state.params)
    keys = jax.random.split(jax.random.key(seed), len(leaves) * 4).reshape(len(leaves), 4)
    draw = lambda i, k: jax.tree.unflatten(
        tree,
        [jax.random.normal(keys[j][k], x.shape, x.dtype) * (0.5 if k else 0.1) for j, x in enumerate(leaves)],
    )
    return draw(None, 0), [draw(None, k) for k in (1, 2, 3)]


def _run(tx, params, grads_list):
    """The updates of each step, applying tx by hand."""
    state, out = tx.init(params), []
    for grads in grads_list:
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out


def _assert_close(got, want, tol=TOL):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=tol, atol=tol, err_msg=optimizers.path_name(path)
        )


def _adam_pax_by_hand(cfg, schedule, params, grads_list):
    """Praxis's sharded_adam: bias-corrected decays, mu / (sqrt(nu + eps_root) + eps), + wd x p, x -lr."""
    b1, b2, eps, eps_root, wd = (
        cfg.adam_b1,
        cfg.adam_b2,
        cfg.adam_eps,
        cfg.adam_eps_root,
        cfg.adam_weight_decay,
    )
    mask = optimizers.decay_mask(params)
    mu = jax.tree.map(np.zeros_like, params)
    nu = jax.tree.map(np.zeros_like, params)
    out = []
    for step, grads in enumerate(grads_list):
        t = step + 1.0
        d1 = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
        d2 = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
        mu = jax.tree.map(lambda g, m, d1=d1: (1 - d1) * np.asarray(g) + d1 * m, grads, mu)
        nu = jax.tree.map(lambda g, v, d2=d2: (1 - d2) * np.asarray(g) ** 2 + d2 * v, grads, nu)
        lr = float(schedule(step))
        upd = jax.tree.map(
            lambda m, v, p, decays, lr=lr: -lr * (m / (np.sqrt(v + eps_root) + eps) + (wd * np.asarray(p) if decays else 0)),
            mu, nu, params, mask,
        )  # fmt: skip
        params = jax.tree.map(lambda p, u: np.asarray(p) + u, params, upd)
        out.append(upd)
    return out


def _reference(kind, cfg, schedule):
    """The optax transform each opt_type must equal (clipping off in these runs)."""
    return {
        "adamw": lambda: optax.adamw(
            schedule, cfg.adam_b1, cfg.adam_b2, cfg.adam_eps, cfg.adam_eps_root, weight_decay=cfg.adam_weight_decay,
            mask=optimizers.decay_mask,
        ),
        "lion": lambda: optax.lion(schedule, cfg.lion_b1, cfg.lion_b2, weight_decay=cfg.lion_weight_decay, mask=optimizers.decay_mask),
        "adafactor": lambda: optax.adafactor(schedule, multiply_by_parameter_scale=False),
        "sgd": lambda: optax.sgd(schedule, momentum=0.9, nesterov=True),
    }[kind]()  # fmt: skip


@pytest.mark.parametrize("kind", ["adamw", "adam_pax", "lion", "adafactor", "sgd"])
def test_each_optimizer_equals_its_reference(kind):
    extra = ["sgd_momentum=0.9", "sgd_nesterov=true"] if kind == "sgd" else []
    cfg, s = _setup(f"opt_type={kind}", "gradient_clipping_threshold=0", *extra)
    params, grads = _params_and_grads(s)
    got = _run(s.tx, params, grads)
    if kind == "adam_pax":
        want = _adam_pax_by_hand(cfg, s.schedule, params, grads)
    else:
        want = _run(_reference(kind, cfg, s.schedule), params, grads)
    for a, b in zip(got, want):
        _assert_close(a, b)


def test_default_optimizer_keeps_its_state_tree():
    cfg, s = _setup()
    plain = optax.chain(
        optax.clip_by_global_norm(cfg.gradient_clipping_threshold),
        optax.adamw(s.schedule, cfg.adam_b1, cfg.adam_b2, cfg.adam_eps, cfg.adam_eps_root, weight_decay=cfg.adam_weight_decay,
                    mask=optimizers.decay_mask),
    )  # fmt: skip
    params, grads = _params_and_grads(s)
    assert jax.tree.structure(s.tx.init(params)) == jax.tree.structure(plain.init(params))
    for a, b in zip(_run(s.tx, params, grads), _run(plain, params, grads)):
        _assert_close(a, b, 0.0)


MATRIX_VIEWS = {  # logical axes -> (reduction axes, output axes) of the matrix each layer multiplies by
    ("embed", "layers", "q_heads", "kv"): ((0,), (2, 3)),
    ("heads", "layers", "kv", "embed"): ((0, 2), (3,)),
    ("embed", "layers", "mlp"): ((0,), (2,)),
    ("mlp", "layers", "embed"): ((0,), (2,)),
    ("exp", "layers", "embed", "mlp"): ((2,), (3,)),
    ("exp", "layers", "mlp", "embed"): ((2,), (3,)),
    ("kv_lora", "layers", "heads", "kv"): ((0,), (2, 3)),
    ("embed", "layers", None): ((0,), (2,)),
    ("embed", "vocab"): ((0,), (1,)),
    ("vocab", "embed"): ((0,), (1,)),
    ("embed", "q_heads", "kv"): ((0,), (1, 2)),
    ("norm", "layers"): None,
    ("norm",): None,
}


@pytest.mark.parametrize("axes", list(MATRIX_VIEWS), ids=str)
def test_muon_matrix_view_of_each_kernel(axes):
    dims = optimizers.muon_dimension_numbers(axes)
    want = MATRIX_VIEWS[axes]
    assert (dims is None) if want is None else (tuple(dims.reduction_axis), tuple(dims.output_axis)) == want


def test_muon_orthogonalises_each_matrix_and_leaves_the_rest_to_adamw():
    cfg, s = _setup("opt_type=muon", "gradient_clipping_threshold=0", "muon_consistent_rms=0")
    groups = optimizers.assign_groups(cfg, s.param_axes)
    assert groups["decoder/layers/self_attention/query/kernel"].opt_type == "muon"
    for path in ("token_embedder/embedding", "decoder/logits_dense/kernel", "decoder/decoder_norm/scale"):
        assert groups[path].opt_type == "adamw", path
    params, grads = _params_and_grads(s)
    got = _run(s.tx, params, grads[:1])[0]
    # optax.contrib.muon on the same matrices is the reference for the muon leaves; optax.adamw for the rest.
    dims = {p: optimizers.muon_dimension_numbers(a) for p, a in s.param_axes.items()}
    is_muon = lambda p: groups[p].opt_type == "muon"
    tree_dims = optimizers.per_param(
        lambda path, _: dims[optimizers.path_name(path)] if is_muon(optimizers.path_name(path)) else None,
        params,
    )
    ref_muon = contrib.muon(
        s.schedule, beta=cfg.muon_beta, eps=cfg.adam_eps, muon_weight_dimension_numbers=tree_dims
    )
    ref_adam = optax.adamw(
        s.schedule,
        cfg.adam_b1,
        cfg.adam_b2,
        cfg.adam_eps,
        cfg.adam_eps_root,
        weight_decay=cfg.adam_weight_decay,
        mask=optimizers.decay_mask,
    )
    want_muon = _run(ref_muon, params, grads[:1])[0]
    want_adam = _run(ref_adam, params, grads[:1])[0]
    flat = lambda t: {
        optimizers.path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]
    }
    got, want_muon, want_adam = flat(got), flat(want_muon), flat(want_adam)
    for path, update in got.items():
        np.testing.assert_allclose(
            update, (want_muon if is_muon(path) else want_adam)[path], rtol=TOL, atol=TOL, err_msg=path
        )
    # Each layer's query matrix: orthogonalised, so its singular values are near 1 (the quintic iteration
    # lands them in roughly [0.7, 1.2]); the shape rule scales by sqrt(max(1, fan_out / fan_in)).
    q = got["decoder/layers/self_attention/query/kernel"]  # [embed, layers, heads, kv]
    lr = float(s.schedule(0))
    for layer in range(q.shape[1]):
        m = (
            -q[:, layer].reshape(q.shape[0], -1)
            / lr
            / math.sqrt(max(1.0, q[:, layer].size / q.shape[0] ** 2))
        )
        sv = np.linalg.svd(m, compute_uv=False)
        assert 0.6 < sv.min() and sv.max() < 1.3, sv


def test_muon_in_bfloat16_still_orthogonalises():
    # The same matrices in bfloat16 weights and gradients: the quintic iteration (chosen by its authors to be
    # stable in bfloat16) still lands every singular value in the float32 run's band.
    _, s = _setup(
        "opt_type=muon", "gradient_clipping_threshold=0", "muon_consistent_rms=0", "weight_dtype=bfloat16"
    )
    params, grads = _params_and_grads(_setup("opt_type=muon")[1])
    bf16 = lambda t: jax.tree.map(lambda x: x.astype(jnp.bfloat16), t)
    q = _run(s.tx, bf16(params), [bf16(grads[0])])[0]["decoder"]["layers"]["self_attention"]["query"][
        "kernel"
    ]
    q = np.asarray(q, np.float32) / -float(s.schedule(0))
    assert np.isfinite(q).all()
    for layer in range(q.shape[1]):
        sv = np.linalg.svd(q[:, layer].reshape(q.shape[0], -1), compute_uv=False)
        assert 0.6 < sv.min() and sv.max() < 1.3, sv


def test_muon_sharded_update_equals_single_device():
    over = [
        "opt_type=muon",
        "gradient_clipping_threshold=0",
        "ici_fsdp_parallelism=4",
        "ici_tensor_parallelism=2",
    ]
    _, one = _setup(*over[:2])
    _, eight = _setup(*over, devices=8)
    params, grads = _params_and_grads(one)
    shard = lambda t, sh: jax.tree.map(jax.device_put, t, sh)
    p8, g8 = shard(params, eight.shardings.params), shard(grads[0], eight.shardings.params)
    state8 = jax.jit(eight.tx.init, out_shardings=eight.shardings.opt_state)(p8)
    step8 = jax.jit(
        eight.tx.update,
        in_shardings=(eight.shardings.params, eight.shardings.opt_state, eight.shardings.params),
    )
    compiled = step8.lower(g8, state8, p8).compile()
    got, _ = compiled(g8, state8, p8)
    want = _run(one.tx, params, grads[:1])[0]
    _assert_close(got, want)
    # No stacked matrix is gathered whole on a device more than once in the step.
    hlo = compiled.as_text()
    for path, x in jax.tree_util.tree_flatten_with_path(eight.abstract_state.params)[0]:
        full = f"f32[{','.join(map(str, x.shape))}]"
        gathers = [
            line
            for line in hlo.splitlines()
            if "all-gather(" in line and line.split("=")[1].strip().startswith(full)
        ]
        assert len(gathers) <= 1, (optimizers.path_name(path), gathers)


def test_frozen_group_keeps_weights_bit_identical_and_no_state():
    groups = "optimizer_groups=[{pattern: 'token_embedder/*', frozen: true}, {pattern: '*norm*', lr_multiplier: 0.5, weight_decay: 0.0}]"
    cfg, s = _setup(groups)
    params, grads = _params_and_grads(s)
    updates = _run(s.tx, params, grads)
    assert all(not np.any(np.asarray(u["token_embedder"]["embedding"])) for u in updates)
    new = optax.apply_updates(params, updates[0])
    assert np.array_equal(
        np.asarray(new["token_embedder"]["embedding"]), np.asarray(params["token_embedder"]["embedding"])
    )
    lines = optimizers.describe(cfg, s.abstract_state.params, s.param_axes)
    assert any(
        "group_0" in line and "frozen" in line and "0.0 KiB optimizer state" in line for line in lines
    ), lines
    assert any("group_1" in line and "lr x 0.5" in line for line in lines), lines


def test_optimizer_group_mistakes_are_one_line_config_errors():
    with pytest.raises(
        ConfigError, match=r"optimizer_groups\[0\] pattern='tokn_embedder/\*': matches no parameter"
    ):
        _setup("optimizer_groups=[{pattern: 'tokn_embedder/*', frozen: true}]")
    with pytest.raises(
        ConfigError, match=r"optimizer_groups\[0\]\.frozn: unknown field.*did you mean 'frozen'"
    ):
        _setup("optimizer_groups=[{pattern: '*', frozn: true}]")
    with pytest.raises(
        ConfigError,
        match="sends decoder/decoder_norm/scale .* to muon, which orthogonalises weight matrices only",
    ):
        _setup("optimizer_groups=[{pattern: '*norm*', opt_type: muon}]")
    with pytest.raises(
        ConfigError, match=r"optimizer_groups\[0\]\.opt_type='mun': expected one of .*did you mean 'muon'"
    ):
        _setup("optimizer_groups=[{pattern: '*', opt_type: mun}]")


SCHEDULES = {  # overrides -> {step: learning rate}, for steps=100, warm-up 10, peak 1, final 0.1
    ("lr_schedule_type=cosine",): {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1},
    ("lr_schedule_type=linear",): {5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1},
    ("lr_schedule_type=constant",): {5: 0.5, 10: 1.0, 100: 1.0},
    ("lr_schedule_type=inverse_sqrt",): {5: 0.5, 10: 1.0, 40: 0.5, 1000: 0.1},
    ("lr_schedule_type=wsd", "wsd_decay_steps_fraction=0.2"): {5: 0.5, 10: 1.0, 80: 1.0, 90: 0.55, 100: 0.1},
    ("lr_schedule_type=wsd", "wsd_decay_steps_fraction=0.2", "wsd_decay_style=cosine"): {
        80: 1.0,
        90: 0.55,
        100: 0.1,
    },
    ("lr_schedule_type=wsd", "wsd_decay_steps_fraction=0.2", "wsd_decay_style=1-sqrt"): {
        80: 1.0,
        85: 1 - 0.9 * 0.5,
        100: 0.1,
    },
    ("lr_schedule_type=linear", "cosine_learning_rate_final_fraction=0.3"): {100: 0.3},
}


@pytest.mark.parametrize("overrides", list(SCHEDULES), ids=" ".join)
def test_schedule_curve_matches_its_formula(overrides):
    cfg = load_config([BASE_YML, "steps=100", "warmup_steps_fraction=0.1", "learning_rate=1.0", *overrides])
    schedule = schedules.learning_rate_schedule(cfg)
    for step, want in SCHEDULES[overrides].items():
        assert float(schedule(step)) == pytest.approx(want, abs=1e-6), step


def test_both_names_of_the_final_fraction_is_an_error():
    cfg = load_config(
        [BASE_YML, "learning_rate_final_fraction=0.2", "cosine_learning_rate_final_fraction=0.3"]
    )
    with pytest.raises(ConfigError, match="cosine_learning_rate_final_fraction=0.3: is the older name"):
        schedules.learning_rate_schedule(cfg)


def test_spike_is_skipped_with_state_unchanged():
    tx = opt_wrappers.skip_on_spikes(optax.sgd(0.1, momentum=0.9), interval=4, factor=2.0)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for loss in (1.0, 1.1, 0.9):
        _, state = tx.update({"w": jnp.ones(3)}, state, params, loss=loss, grad_norm=1.0)
    before = state.inner
    updates, state = tx.update({"w": jnp.ones(3)}, state, params, loss=5.0, grad_norm=1.0)
    assert not np.any(np.asarray(updates["w"])) and int(state.skipped) == 1
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.inner)))
    updates, state = tx.update(
        {"w": jnp.ones(3)}, state, params, loss=1.0, grad_norm=9.0
    )  # a grad-norm spike
    assert int(state.skipped) == 2
    updates, state = tx.update({"w": jnp.ones(3)}, state, params, loss=1.0, grad_norm=1.0)
    assert np.all(np.asarray(updates["w"]) != 0) and int(state.skipped) == 2


def test_readers_and_export_take_the_ema_the_run_kept(tmp_path):
    over = ["per_device_batch_size=1", "ema_decay=0.5"]
    train_run(tmp_path, "e", 2, over)
    stored = _stored_state(tmp_path / "e", 2)
    prefix = next(k for k in stored if "/ema/" in k).split("/ema/")[0] + "/ema/"
    _, s = _setup(*over)
    target = checkpointing.abstract_with_shardings(s.abstract_state, s.shardings).params
    flat = lambda t: {
        optimizers.path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]
    }
    ema = flat(checkpointing.load_params(str(tmp_path / "e"), target, ema=True))
    raw = flat(checkpointing.load_params(str(tmp_path / "e"), target))
    assert all(np.array_equal(x, stored[prefix + path]) for path, x in ema.items())
    assert all(np.array_equal(x, stored["params/" + path]) for path, x in raw.items())
    assert not np.array_equal(ema["token_embedder/embedding"], raw["token_embedder/embedding"])
    for use_ema, want in ((True, ema), (False, raw)):
        out = tmp_path / f"hf_{use_ema}"
        maxtext_to_hf.export(str(tmp_path / "e"), str(out), log=quiet, ema=use_ema)
        got = safetensors_tensors(out)["model.embed_tokens.weight"].numpy()
        np.testing.assert_array_equal(got, want["token_embedder/embedding"])


def test_ema_of_weights_follows_its_formula():
    tx = optax.chain(optax.sgd(0.5), opt_wrappers.ema_of_params(0.9))
    params = {"w": jnp.array([1.0, 2.0])}
    state = tx.init(params)
    ema = np.asarray(params["w"])
    for g in ([1.0, 0.0], [0.0, 2.0]):
        updates, state = tx.update({"w": jnp.array(g)}, state, params)
        params = optax.apply_updates(params, updates)
        ema = 0.9 * ema + 0.1 * np.asarray(params["w"])
        np.testing.assert_allclose(
            opt_wrappers.find_state(state, opt_wrappers.EmaParamsState).ema["w"], ema, rtol=1e-7
        )


def _stored_state(run_dir, step) -> dict:
    """{path: array} of every leaf (parameters and optimizer state) of a run's checkpoint `step`."""
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(run_dir, "checkpoints", str(step), "state"))
    return {optimizers.path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


RESUMES = {
    "muon_groups_ema_skip": ["opt_type=muon", "optimizer_groups=[{pattern: '*norm*', lr_multiplier: 0.5}, {pattern: 'token_embedder/*', frozen: true}]",
                             "ema_decay=0.9", "skip_step_on_spikes=true", "skip_step_interval=4"],
    "adam_pax": ["opt_type=adam_pax"],
    "lion": ["opt_type=lion"],
    "adafactor": ["opt_type=adafactor"],
    "sgd": ["opt_type=sgd", "sgd_momentum=0.9"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RESUMES))
def test_each_optimizer_state_resumes_bitwise(tmp_path, case):
    over = ["per_device_batch_size=1", *RESUMES[case]]
    full = train_run(tmp_path, "full", 4, over)
    fork_run(tmp_path, "full", 2, "resumed")
    resumed = train_run(tmp_path, "resumed", 4, over)
    assert resumed == full[2:]
    a, b = _stored_state(tmp_path / "full", 4), _stored_state(tmp_path / "resumed", 4)
    assert a.keys() == b.keys() and any(k.startswith("opt_state") for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_switching_optimizer_on_resume_needs_reset(tmp_path, capsys):
    over = ["per_device_batch_size=1"]
    train_run(tmp_path, "a", 2, over)
    with pytest.raises(
        ConfigError,
        match=r"opt_type: step 2 of run 'a' was trained with 'adamw', this config has 'lion'.*reset_optimizer_state=true",
    ):
        train_run(tmp_path, "a", 4, [*over, "opt_type=lion"])
    capsys.readouterr()
    losses = train_run(tmp_path, "a", 4, [*over, "opt_type=lion", "reset_optimizer_state=true"])
    assert (
        len(losses) == 4
        and "step 2's parameters with a fresh lion optimizer state" in capsys.readouterr().out
    )
    stored = _stored_state(tmp_path / "a", 4)
    assert not any(k.endswith("/nu") or "/nu/" in k for k in stored)  # lion keeps one moment, AdamW two
    assert any("/mu/" in k for k in stored)
