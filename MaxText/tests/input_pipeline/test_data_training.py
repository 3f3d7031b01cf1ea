"""User datasets through the model and the real trainer: document isolation, training, exact resume, exit 2."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from MaxText.config import ConfigError, load_config, model_config
from MaxText.input_pipeline import make_train_iterator
from MaxText.tests.helpers import BASE_YML, write_grain, write_hf, write_tfds
from MaxText.training import trainer
from MaxText.models.transformer import make_model

RUN = [
    "model_name=test-tiny",
    "vocab_size=4096",
    "max_target_length=32",
    "per_device_batch_size=1",  # 8 fake devices: global batch 8
    "learning_rate_schedule_steps=4",
    "checkpoint_period=2",
    "max_num_checkpoints_to_keep=0",
    "async_checkpointing=false",
    "log_period=1",
    "eval_interval=0",
    "eval_steps=1",
    "peak_tflops_per_device=1",
]


@pytest.fixture(scope="module", name="data")
def data_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    grain = write_grain(str(root / "grain"))
    hf = write_hf(str(root / "hf"))
    name = write_tfds(str(root / "tfds"))
    return {
        "grain": [f"grain_train_files={grain['array_record']};{grain['parquet']}:0.5", "packing_type=concat"],
        "hf": ["dataset_type=hf", "hf_path=json", f"hf_data_files={hf['json'][1]}"],
        "hf_streaming": [
            "dataset_type=hf",
            f"hf_path={hf['save_to_disk'][0]}",
            "hf_streaming=true",
            "packing_type=concat",
        ],
        "tfds": [
            "dataset_type=tfds",
            f"dataset_name={name}",
            f"dataset_path={root / 'tfds'}",
            "eval_split=validation",
        ],
        "root": root,
    }


def _cfg(root, run_name, overrides, *extra):
    dataset_type = ["dataset_type=grain"] if not any(o.startswith("dataset_type=") for o in overrides) else []
    return load_config(
        [
            BASE_YML,
            *RUN,
            *dataset_type,
            *overrides,
            f"base_output_directory={root}",
            f"run_name={run_name}",
            *extra,
        ]
    )


def _losses(run_dir) -> list:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("dataset_type", ["grain", "hf", "hf_streaming", "tfds"])
def test_trains_and_resumes_exactly(data, dataset_type):
    """4 steps uninterrupted; a second run started from the first one's step-2 checkpoint (model and data
    position) continues with bitwise the same losses."""
    root, overrides = data["root"], data[dataset_type]
    a, b = root / f"{dataset_type}_a", root / f"{dataset_type}_b"
    assert trainer.train(_cfg(root, a.name, overrides, "steps=4")) == 0
    shutil.copytree(a / "checkpoints" / "2", b / "checkpoints" / "2")
    assert trainer.train(_cfg(root, b.name, overrides, "steps=4")) == 0
    losses = _losses(a)
    assert [s for s, _ in losses] == [1, 2, 3, 4] and _losses(b) == losses[2:]
    assert len({loss for _, loss in losses}) == 4 and all(np.isfinite([loss for _, loss in losses]))


def test_attention_never_crosses_a_document_boundary(data):
    """Changing one document of a packed row leaves the logits of every other document unchanged."""
    cfg = _cfg(data["root"], "iso", data["grain"])
    batch = next(make_train_iterator(trainer.data_config(cfg, 8)))
    seg = batch["inputs_segmentation"]
    r = int(np.argmax([len(set(s[s > 0])) for s in seg]))
    assert len(set(seg[r][seg[r] > 0])) >= 3  # a row holding (parts of) at least three documents
    model = make_model(model_config(cfg))
    row = {k: batch[k][r : r + 1] for k in ("inputs", "inputs_position", "inputs_segmentation")}
    params = model.init(jax.random.key(0), *row.values(), "train")["params"]

    @jax.jit
    def apply(ids):
        return model.apply(
            {"params": params}, ids, row["inputs_position"], row["inputs_segmentation"], "train"
        )[0]

    def logits(ids):
        return np.asarray(apply(ids)[0])

    base = logits(row["inputs"])
    for target in (1, 2):  # the first document (before the others) and a middle one
        changed = row["inputs"].copy()
        changed[0, seg[r] == target] = (changed[0, seg[r] == target] + 7) % 4096
        out = logits(changed)
        others = seg[r] != target
        np.testing.assert_array_equal(out[others], base[others])
        assert np.abs(out[seg[r] == target] - base[seg[r] == target]).max() > 1e-3  # the change is seen


def test_target_eval_loss_stops_training(data):
    root = data["root"]
    cfg = _cfg(root, "target", data["grain"], "steps=6", "eval_interval=2", "target_eval_loss=100")
    assert trainer.train(cfg) == 0
    steps = [s for s, _ in _losses(root / "target")]
    assert steps == [1, 2]  # the first eval (step 2) is below 100: stopped and saved there
    assert sorted(os.listdir(root / "target" / "checkpoints")) == ["2"]


def test_bad_data_is_a_config_error(data):
    root = data["root"]
    cases = [
        (
            ["grain_train_files=/nonexistent/*.array_record"],
            "grain_train_files: '/nonexistent/.*' matches no file",
        ),
        (["dataset_type=hf", "hf_path=json", f"hf_data_files={root}/none.jsonl"], "matches no file"),
        ([*data["grain"], "train_data_columns=body"], "train_data_columns='body': no such column"),
        (
            [*data["grain"], "grain_eval_files=/nonexistent.parquet"],
            "grain_eval_files: '/nonexistent.parquet'",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            trainer.train(_cfg(root, "bad", overrides))
    with pytest.raises(ConfigError, match="grain_train_files='': dataset_type='grain' needs it set"):
        _cfg(root, "bad", [])
