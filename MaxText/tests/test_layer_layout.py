"""scan_layers interchange: parameters saved scanned load per-layer and back, bit-exact and sharded."""

import jax
import numpy as np
import pytest

from MaxText.config import ConfigError, load_config, model_config
from MaxText.layers.decoder import unstack_layers
from MaxText.parallel import mesh as mesh_lib
from MaxText.tests.conftest import BASE_YML, TINY
from MaxText.training import checkpointing, layer_layout, trainer
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


def test_resume_with_the_other_setting_is_a_clear_error(scanned, tmp_path):
    directory, _, _ = scanned
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    save(
        str(run / "checkpoints"),
        checkpointing_state(checkpointing.load_params(directory, target_of(build(True)[1]))),
    )
    cfg = load_config([BASE_YML, *TINY, "enable_checkpointing=true", "scan_layers=false",
                       f"base_output_directory={tmp_path}", "run_name=r"])  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"scan_layers=False: run 'r' was checkpointed at step 1 with scan_layers=True"
    ):
        trainer.train(cfg)


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
