"""Mesh construction over every axis (ici and dcn degrees, slices, hybrid layout), axis rules, sharding check.

No compilation: shapes and layouts only (the loss-equality tests per strategy live in test_train.py).
"""

from types import SimpleNamespace

import jax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from MaxText.config import ConfigError, load_config, loader
from MaxText.parallel import mesh as mesh_lib
from MaxText.tests.helpers import BASE_YML, TINY
from MaxText.training import trainer


def cfg_of(*overrides):
    return load_config([BASE_YML, *TINY, *overrides])


def fake_devices(n, per_granule, attr):
    """CPU-like device stand-ins grouped into granules of `per_granule` by process_index or slice_index."""
    devices = [SimpleNamespace(id=i, platform="cpu", device_kind="cpu", process_index=0) for i in range(n)]
    for d in devices:
        setattr(d, attr, d.id // per_granule)
    return devices


def test_every_axis_has_ici_and_dcn_keys_and_one_auto_fill_per_group():
    cfg = cfg_of("ici_fsdp_parallelism=2", "ici_tensor_sequence_parallelism=2", "ici_pipeline_parallelism=-1")
    assert tuple(cfg.mesh_axes) == mesh_lib.MESH_AXES
    ici, dcn = mesh_lib.mesh_shapes(cfg, 8)
    assert dict(zip(cfg.mesh_axes, ici)) == {
        **dict.fromkeys(mesh_lib.MESH_AXES, 1), "stage": 2, "fsdp": 2, "tensor_sequence": 2,
    }  # fmt: skip
    assert dcn == [1] * len(mesh_lib.MESH_AXES)  # dcn_data_parallelism=-1 fills the one slice
    cfg = cfg_of("ici_fsdp_parallelism=4", "dcn_data_parallelism=1", "dcn_fsdp_parallelism=-1")
    assert mesh_lib.mesh_shape(cfg, 8, num_slices=2)[2] == 8  # fsdp: 4 per slice x 2 slices
    assert mesh_lib.mesh_shape(cfg, 8, num_slices=2)[0] == 1


@pytest.mark.parametrize(
    "overrides, devices, slices, message",
    [
        (["ici_fsdp_parallelism=3"], 8, 1, "ici_fsdp_parallelism=3: product 3 != 8 devices per slice"),
        (
            ["ici_context_parallelism=-1"],
            8,
            1,
            "ici_fsdp_parallelism and ici_context_parallelism are both -1",
        ),
        (["ici_fsdp_parallelism=-1", "ici_expert_parallelism=3"], 8, 1, "ici_expert_parallelism=3"),
        (
            ["ici_fsdp_parallelism=4", "dcn_data_parallelism=1"],
            8,
            2,
            "every dcn_* degree 1: product 1 != 2 slices",
        ),
        (
            ["dcn_data_parallelism=-1", "dcn_pipeline_parallelism=-1"],
            8,
            2,
            "dcn_data_parallelism and dcn_pipeline",
        ),
        ([], 8, 3, "8 devices do not split evenly into 3 slices"),
    ],
)
def test_mesh_errors_name_the_keys(overrides, devices, slices, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        mesh_lib.mesh_shapes(cfg_of(*overrides), devices, slices)


def test_mesh_axes_must_list_every_axis_once():
    with pytest.raises(ConfigError, match="mesh_axes=.*expected each of data, stage, fsdp"):
        cfg_of("mesh_axes=[data,fsdp,tensor]")
    reordered = ["tensor", *[a for a in mesh_lib.MESH_AXES if a != "tensor"]]
    assert cfg_of(f"mesh_axes=[{','.join(reordered)}]", "ici_fsdp_parallelism=4", "ici_tensor_parallelism=2")


def test_hybrid_mesh_puts_slices_outermost():
    # Processes as slices (CPU/GPU): dcn data 2 x ici fsdp 4; each data row is one process's devices.
    cfg = cfg_of("ici_fsdp_parallelism=4", "dcn_data_parallelism=2")
    devices = fake_devices(8, 4, "process_index")
    assert mesh_lib.slice_granule(cfg, devices) == ("process_index", 2)
    grid = mesh_lib.device_grid(cfg, devices)
    assert grid.shape == (2, 1, 4, 1, 1, 1, 1, 1, 1, 1)
    assert [[d.process_index for d in row.ravel()] for row in grid] == [[0] * 4, [1] * 4]
    # No dcn degree above 1: the processes form one slice (plain ici mesh over all devices).
    assert mesh_lib.slice_granule(cfg_of("ici_fsdp_parallelism=8"), devices) == (None, 1)
    # Devices that carry slice_index (TPU multislice) are grouped by it, dcn -1 filling the slices.
    sliced = fake_devices(8, 2, "slice_index")
    cfg = cfg_of("ici_fsdp_parallelism=2", "dcn_data_parallelism=-1")
    assert mesh_lib.slice_granule(cfg, sliced) == ("slice_index", 4)
    grid = mesh_lib.device_grid(cfg, sliced)
    assert grid.shape[0] == 4 and grid.shape[2] == 2
    assert [{d.slice_index for d in row.ravel()} for row in grid] == [{0}, {1}, {2}, {3}]


def test_axis_rules_drop_size_one_axes():
    cfg = cfg_of("ici_fsdp_parallelism=4", "ici_tensor_parallelism=2")
    rules = dict(mesh_lib.axis_rules(cfg, mesh_lib.make_mesh(cfg)))
    assert rules["embed"] == "fsdp" and rules["mlp"] == "tensor" and rules["layers"] is None
    assert rules["activation_batch"] == "fsdp"
    s = trainer.build(cfg, jax.devices())
    wi = s.shardings.params["decoder"]["layers"]["mlp"]["wi_0"]["kernel"]  # [embed, layers, mlp]
    assert tuple(wi.spec) == ("fsdp", None, "tensor")


def test_context_and_tensor_sequence_shard_the_length():
    s = trainer.build(cfg_of("ici_fsdp_parallelism=4", "ici_context_parallelism=2"), jax.devices())
    assert tuple(s.batch_sharding.spec) == ("fsdp", "context")
    assert dict(s.rules)["activation_norm_length"] == "context"
    s = trainer.build(cfg_of("ici_fsdp_parallelism=4", "ici_tensor_sequence_parallelism=2"), jax.devices())
    assert dict(s.rules)["activation_norm_length"] == "tensor_sequence"  # the residual stream
    assert dict(s.rules)["activation_heads"] == "tensor_sequence"
    wq = s.shardings.params["decoder"]["layers"]["self_attention"]["query"]["kernel"]
    assert tuple(wq.spec)[:3] == ("fsdp", None, "tensor_sequence")


def test_fsdp_transpose_takes_the_mlp_axis_and_embed_falls_back():
    cfg = cfg_of("ici_fsdp_parallelism=2", "ici_fsdp_transpose_parallelism=2", "ici_tensor_parallelism=2")
    s = trainer.build(cfg, jax.devices())
    wi = s.shardings.params["decoder"]["layers"]["mlp"]["wi_0"]["kernel"]
    assert tuple(wi.spec) == ("fsdp", None, ("fsdp_transpose", "tensor"))
    wq = s.shardings.params["decoder"]["layers"]["self_attention"]["query"]["kernel"]
    assert tuple(wq.spec)[0] == ("fsdp", "fsdp_transpose")


def test_sharding_tolerance_refuses_unsharded_params():
    mesh = mesh_lib.make_mesh(cfg_of("ici_fsdp_parallelism=8"))
    big = jax.ShapeDtypeStruct((64, 64), "float32")
    small = jax.ShapeDtypeStruct((64,), "float32")
    sharded = NamedSharding(mesh, PartitionSpec("fsdp"))
    params = {"w": big, "scale": small}
    excess = mesh_lib.check_params_sharded(params, {"w": sharded, "scale": sharded}, mesh, 0.0)
    assert excess == 0.0
    replicated = mesh_lib.replicated(mesh)
    # A replicated norm scale: 64 * 7/8 extra elements per device over an ideal of 520.
    excess = mesh_lib.check_params_sharded(params, {"w": sharded, "scale": replicated}, mesh, 0.2)
    assert excess == pytest.approx(56 / 520)
    with pytest.raises(ConfigError, match=r"sharding_tolerance=0.02: .*689\.2% above the ideal"):
        mesh_lib.check_params_sharded(params, {"w": replicated, "scale": sharded}, mesh, 0.02)
    # Through the trainer: rules that leave the embed axis unsharded make an FSDP run refuse to start.
    rules = "logical_axis_rules=[[activation_batch,[data,fsdp]],[mlp,tensor],[vocab,tensor],[norm,fsdp]]"
    with pytest.raises(ConfigError, match="sharding_tolerance=0.02"):
        trainer.build(cfg_of("ici_fsdp_parallelism=8", rules), jax.devices())


def test_model_yaml_sets_logical_axis_rules(tmp_path, monkeypatch):
    with open(loader.model_yaml_path("test-tiny"), encoding="utf-8") as f:
        tiny = f.read()
    (tmp_path / "tiny-rules.yml").write_text(
        tiny
        + 'logical_axis_rules: [["activation_batch", ["data", "fsdp"]], ["embed", "fsdp"], ["norm", "fsdp"], '
        '["mlp", "tensor"], ["heads", "tensor"], ["q_heads", "tensor"], ["kv_heads", "tensor"], ["vocab", "tensor"]]\n'
    )
    monkeypatch.setattr(loader, "MODELS_DIR", str(tmp_path))
    cfg = load_config([BASE_YML, *TINY, "model_name=tiny-rules", "ici_fsdp_parallelism=8"])
    assert cfg.logical_axis_rules[1] == ["embed", "fsdp"] and len(cfg.logical_axis_rules) == 8
    s = trainer.build(cfg, jax.devices())
    assert tuple(s.shardings.params["token_embedder"]["embedding"].spec) == (None, "fsdp")
