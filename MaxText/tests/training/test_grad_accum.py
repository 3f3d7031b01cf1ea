"""Gradient accumulation equals the large batch on a sharded mesh: k microbatches of B / k rows give the
losses and parameters of one batch of B rows, step after step (test_train covers one device)."""

import jax
import numpy as np
import pytest

from MaxText.tests.helpers import run_steps


@pytest.fixture(scope="module", name="large_batch")
def _large_batch():
    return run_steps(["per_device_batch_size=8"], num_devices=1)


@pytest.mark.slow
def test_accumulated_sharded_steps_equal_the_large_batch(large_batch):
    ref, ref_state = large_batch
    mesh = ["ici_data_parallelism=2", "ici_fsdp_parallelism=2", "ici_tensor_parallelism=2"]
    got, state = run_steps(["per_device_batch_size=1", "gradient_accumulation_steps=2", *mesh], num_devices=8)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert ref[-1] < ref[0]
    # Per-tensor relative error after 3 AdamW steps: Adam's normalised step magnifies float32
    # summation-order noise on near-zero gradients elementwise; a wrongly scaled or dropped microbatch
    # moves whole tensors by far more.
    for path, a in jax.tree_util.tree_leaves_with_path(state.params):
        b = ref_state.params
        for key in path:
            b = b[key.key]
        err = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert err < 1e-5, (jax.tree_util.keystr(path), err)
