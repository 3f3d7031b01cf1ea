"""LoRA interop with Hugging Face PEFT (the real `peft` package): a PEFT adapter read with peft_to_lora gives
our model the logits PEFT + transformers give (float32, 1e-4), lora_to_peft writes it back bit-exact, and
merge_lora folds it into a full checkpoint with the same logits."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

# pylint: disable=wrong-import-position
from MaxText import api, convert
from MaxText.checkpoint import checkpointing
from MaxText.conversion import hf_to_maxtext
from MaxText.tests.helpers import make_hf_model, quiet, safetensors_tensors

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FAMILIES = {"llama2": TARGETS, "qwen3_moe": ["q_proj", "k_proj", "v_proj", "o_proj"]}
# MoE: the routed experts' fused tensors too, as PEFT adapts them (target_parameters).
EXPERT_PARAMETERS = {"qwen3_moe": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}


def _peft_pair(family: str, root):
    """(PEFT model in eval mode, its adapter dir, our converted base dir, token ids) with random A and B."""
    hf = make_hf_model(family, root / "hf")
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=FAMILIES[family], target_parameters=EXPERT_PARAMETERS.get(family),
        init_lora_weights=False,
    )  # fmt: skip
    torch.manual_seed(1)
    model = peft.get_peft_model(hf, config).eval()
    model.save_pretrained(str(root / "adapter"))
    hf_to_maxtext.convert(str(root / "hf"), str(root / "base"), log=quiet)
    ids = np.random.default_rng(0).integers(3, 250, size=(2, 12))
    return model, root / "adapter", root / "base", ids


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_peft_adapter_logits_and_round_trip(family, tmp_path):
    model, adapter, base, ids = _peft_pair(family, tmp_path)
    with torch.no_grad():
        expected = model(torch.tensor(ids)).logits.numpy()
    assert convert.main(["peft_to_lora", "--input", str(adapter), "--base", str(base),
                         "--output", str(tmp_path / "ours")]) == 0  # fmt: skip
    ours = api.load(str(tmp_path / "ours"), matmul_precision="highest")
    got = ours.logits(ids)
    diff = float(np.max(np.abs(got - expected)))
    print(f"{family}: max |ours - peft| logit difference {diff:.2e}")
    assert diff < 1e-4
    # Without the adapters the logits differ: the comparison above is not of the base alone.
    assert float(np.max(np.abs(api.load(str(base)).logits(ids) - expected))) > 1e-2
    # The base with lora_path= is the same adapted model, applied unmerged.
    beside = api.load(str(base), lora_path=str(tmp_path / "ours"), matmul_precision="highest")
    np.testing.assert_array_equal(beside.logits(ids), got)

    assert (
        convert.main(["lora_to_peft", "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "back")])
        == 0
    )
    original, back = safetensors_tensors(adapter), safetensors_tensors(tmp_path / "back")
    assert sorted(original) == sorted(back)
    for name, value in original.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    with open(tmp_path / "back" / "adapter_config.json", encoding="utf-8") as f:
        written = json.load(f)
    assert (written["r"], written["lora_alpha"], sorted(written["target_modules"])) == (
        4,
        8,
        sorted(FAMILIES[family]),
    )
    assert sorted(written.get("target_parameters", [])) == sorted(EXPERT_PARAMETERS.get(family, []))
    # PEFT loads what we wrote onto the base and gives the same logits.
    reloaded = peft.PeftModel.from_pretrained(
        make_hf_model(family, tmp_path / "hf2"), str(tmp_path / "back")
    ).eval()
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(torch.tensor(ids)).logits.numpy(), expected, atol=1e-6)

    if family == "llama2":  # merging: a full checkpoint, no adapters, same logits
        assert (
            convert.main(
                ["merge_lora", "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "merged")]
            )
            == 0
        )
        meta = checkpointing.read_meta(str(tmp_path / "merged"))
        assert meta["config"]["lora_rank"] == 0 and "base_params" not in meta
        merged = api.load(str(tmp_path / "merged"), matmul_precision="highest")
        np.testing.assert_allclose(merged.logits(ids), got, atol=1e-5)
        assert os.path.getsize(tmp_path / "ours" / "checkpoints" / "0" / "state") >= 0
