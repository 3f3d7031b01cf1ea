"""scan_layers interchange: parameters saved scanned load per-layer and back, bit-exact and sharded; a run
resumes with the other setting."""

import os

import jax
import orbax.checkpoint as ocp
import numpy as np
import pytest

from MaxText.config import load_config, model_config
from MaxText.models.transformer import unstack_layers
from MaxText.parallel import mesh as mesh_lib
from MaxText.tests.helpers import BASE_YML, TINY, fork_run, train_run
from MaxText.checkpoint import checkpointing, layer_layout
from MaxText.training import trainer
from MaxText.training.train_state import init_state


def build(scan: bool, *extra):
    cfg = load_config(
        [BASE_YML, *TINY, "enable_checkpointing=true", f"scan_layers={str(scan).lower()}", *extra]
    )
    return cfg, trainer.build(cfg, jax.devices())


def save(directory, state):
    ckpt = checkpointing.Checkpointer(directory, 0, async_save=False)
    ckpt.save(1, state, {"step": 1}, {"format_version": checkpointing.FORMAT_VERSION})
    ckpt.close()


def target_of(s):
    return checkpointing.abstract_with_shardings(s.abstract_state, s.shardings).params


@pytest.fixture(scope="module", name="scanned")
def fixture_scanned(tmp_path_factory):
    """A scanned checkpoint of freshly initialised test-tiny params on the 8-device FSDP mesh."""
    cfg, s = build(True, "ici_fsdp_parallelism=4", "ici_tensor_parallelism=2")
    with mesh_lib.activate(s.mesh, s.rules):
        state = init_state(s.model, s.tx, cfg.init_weights_seed, s.shardings)
    directory = str(tmp_path_factory.mktemp("scanned") / "checkpoints")
    save(directory, state)
    return directory, jax.device_get(state.params), model_config(cfg)


def assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_scanned_checkpoint_loads_unscanned_and_back(scanned, tmp_path):
    directory, params, mcfg = scanned
    _, s = build(False, "ici_fsdp_parallelism=8")  # another mesh too
    target = target_of(s)
    loaded = checkpointing.load_params(directory, target)
    assert "layers_1" in loaded["decoder"] and "layers" not in loaded["decoder"]
    assert_same(jax.device_get(loaded), unstack_layers(params, mcfg))
    wq = loaded["decoder"]["layers_0"]["self_attention"]["query"]["kernel"]
    assert wq.sharding == target["decoder"]["layers_0"]["self_attention"]["query"]["kernel"].sharding
    # ... and a per-layer checkpoint loads into a scanned model.
    save(str(tmp_path / "unscanned"), checkpointing_state(loaded))
    _, s2 = build(True)
    back = checkpointing.load_params(str(tmp_path / "unscanned"), target_of(s2))
    assert_same(jax.device_get(back), params)


def checkpointing_state(params):
    return {"step": np.int32(1), "params": params, "opt_state": {}}


def _train(base, run_name, scan: bool, steps: int) -> list:
    return train_run(base, run_name, steps, [f"scan_layers={str(scan).lower()}"])


@pytest.mark.slow
def test_full_checkpoint_resumes_with_the_other_setting(tmp_path):
    """Params and optimizer state written scanned resume per-layer (steps 2 -> 4), whose checkpoint resumes
    scanned (4 -> 6), each continuing the loss of the uninterrupted scanned run (scanned and per-layer forward
    passes agree to float rounding, hence rtol)."""
    ref = _train(tmp_path, "ref", True, 6)
    assert len(set(ref)) == 6
    fork_run(tmp_path, "ref", 2, "s2u")
    np.testing.assert_allclose(_train(tmp_path, "s2u", False, 4), ref[2:4], rtol=1e-5)
    stored = ocp.PyTreeCheckpointer().metadata(os.path.join(tmp_path, "s2u", "checkpoints", "4", "state"))
    assert "layers_1" in getattr(stored, "item_metadata", stored)["params"]["decoder"]  # saved per-layer now
    fork_run(tmp_path, "s2u", 4, "u2s")
    np.testing.assert_allclose(_train(tmp_path, "u2s", True, 6), ref[4:6], rtol=1e-5)


def test_plan_refuses_other_differences_and_ambiguous_axes():
    shape = jax.ShapeDtypeStruct
    stacked = {"layers": {"w": shape((4, 2, 2), "float32")}, "norm": {"s": shape((4,), "float32")}}
    per_layer = {"layers_0": {"w": shape((4, 2), "float32")}, "layers_1": {"w": shape((4, 2), "float32")}}
    with pytest.raises(ValueError, match="cannot tell the layer axis"):  # (4, 2) -> (4, 2, 2): axis 1 or 2
        layer_layout.plan(stacked, {**per_layer, "norm": stacked["norm"]})
    stacked["layers"]["w"] = shape((4, 2, 3), "float32")
    per_layer = {f"layers_{i}": {"w": shape((4, 3), "float32")} for i in range(2)}
    restacks = layer_layout.plan(stacked, {**per_layer, "norm": stacked["norm"]})
    assert restacks == [layer_layout.Restack("layers", 2, 1, False)]
    with pytest.raises(ValueError, match="differ in norm"):
        layer_layout.plan(stacked, per_layer)
