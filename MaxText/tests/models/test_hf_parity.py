"""Parity with Hugging Face transformers (float32, offline) through the real conversion path, for every family
with a Hugging Face checkpoint: llama2, llama3, mistral, gemma, gemma2, gemma3 (text), qwen3, olmo3, and the
MoE families mixtral, qwen3_moe (also with a dense first layer), deepseek2 and deepseek3 (test_moe_families'
tiny models: 8 experts, top-2, groups, a shared expert, router bias, a dense first layer, MLA, YaRN).

For each family a tiny random Hugging Face model with its special features switched on (GQA/MQA, llama3 rope
scaling, sliding windows shorter than the sequence, soft caps, query_pre_attn_scalar, local/global rope with
linear scaling, a Gemma 3 local/global group plus a tail, qk-norm, random 1 + w norms; OLMo 3's post norms,
whole-projection qk-norm and YaRN on its full layers only) is saved with
save_pretrained, converted with MaxText.convert and loaded with MaxText.api, then checked: logits within 1e-4,
greedy generation with our KV cache equal to transformers' generate, the maxtext_to_hf export loading in
transformers with bit-exact tensors and identical logits, and one training step on the converted checkpoint
whose loss equals the Hugging Face model's loss on the same batch. All families share one process (and its
compilation cache). The models and their case tables are helpers.PARITY_MODELS, shared with test_convert
and test_api.
"""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# pylint: disable=wrong-import-position
from MaxText import api
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint
from MaxText.conversion import hf_to_maxtext, maxtext_to_hf
from MaxText.input_pipeline.synthetic import synthetic_batch
from MaxText.tests.helpers import (
    BASE_YML,
    GEMMA3_ROPE,
    MOE_HF_MODELS,
    OLMO3_ROPE,
    PARITY_FAMILIES,
    PARITY_VOCAB,
)
from MaxText.tests.helpers import assert_bit_exact, hf_config, hf_logits, make_hf_model, quiet, random_ids
from MaxText.tests.helpers import safetensors_tensors

SEQ = 32
MOE_FAMILIES = list(MOE_HF_MODELS)
MOE_CONFIG_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok",
                     "moe_intermediate_size", "n_shared_experts", "first_k_dense_replace", "n_group", "topk_group",
                     "topk_method", "routed_scaling_factor", "norm_topk_prob", "q_lora_rank", "kv_lora_rank",
                     "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rope_interleave", "mlp_only_layers",
                     "decoder_sparse_step")  # fmt: skip
# What switches each family's special feature off (to show the test inputs exercise it).
FEATURE_OFF = {
    "llama3": {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}},
    "mistral": {"sliding_window": None},
    "mixtral": {"sliding_window": None},
    "qwen3_moe": {"norm_topk_prob": False},
    "deepseek2": {"routed_scaling_factor": 1.0},
    "deepseek3": {"routed_scaling_factor": 1.0},
    "gemma2": {"sliding_window": 256, "attn_logit_softcapping": None, "final_logit_softcapping": None},
    "gemma3": {
        "rope_parameters": {**GEMMA3_ROPE, "full_attention": {"rope_type": "default", "rope_theta": 1000.0}}
    },
    "olmo3": {
        "rope_parameters": {**OLMO3_ROPE, "full_attention": {"rope_type": "default", "rope_theta": 100.0}}
    },
}


class Case:
    """One family: the Hugging Face model and directory, the converted checkpoint and our loaded model."""

    def __init__(self, family, root):
        self.family, self.root = family, root
        self.hf_dir, self.ckpt = root / "hf", root / "ckpt"
        self.hf = make_hf_model(family, self.hf_dir)
        hf_to_maxtext.convert(str(self.hf_dir), str(self.ckpt), log=quiet)
        self.model = api.load(str(self.ckpt))
        self.ids = random_ids((2, SEQ))
        self.hf_logits = hf_logits(self.hf, self.ids)


_CASES = {}


def get_case(family: str, tmp_path_factory) -> Case:
    """One Case per family for the whole module (tiny models; building one is the expensive part)."""
    if family not in _CASES:
        _CASES[family] = Case(family, tmp_path_factory.mktemp(family))
    return _CASES[family]


@pytest.fixture(scope="module", params=PARITY_FAMILIES, name="case")
def case_fixture(request, tmp_path_factory):
    return get_case(request.param, tmp_path_factory)


def test_logits_match_hf(case):
    ours = case.model.logits(case.ids)
    assert ours.dtype == np.float32 and ours.shape == (2, SEQ, PARITY_VOCAB)
    diff = float(np.abs(ours - case.hf_logits).max())
    print(f"\n{case.family}: max |logits - HF| = {diff:.3e}")
    assert diff <= 1e-4


@pytest.mark.slow
def test_api_loads_the_hugging_face_directory_itself(case):
    """api.load(HF dir) converts on the fly: the same parameters and tokenizer as the converted directory."""
    import jax

    direct = api.load(str(case.hf_dir))
    assert direct.cfg.decoder_block == case.model.cfg.decoder_block
    leaves = jax.tree_util.tree_leaves_with_path(case.model.params)
    assert len(leaves) == len(jax.tree_util.tree_leaves(direct.params))
    for (path, want), got in zip(leaves, jax.tree_util.tree_leaves(direct.params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(path))
    text = "To be, or not"
    assert direct.tokenizer.encode(text) == case.model.tokenizer.encode(text)
    assert direct.tokenizer.decode(direct.tokenizer.encode(text)) == text


@pytest.mark.parametrize("family", list(FEATURE_OFF))
def test_inputs_exercise_the_family_feature(family, tmp_path_factory):
    """Switching the family's special feature off changes transformers' logits on the test inputs, so the
    parity tests above really compare that feature. llama2 (the plain baseline), gemma and qwen3 have no
    config switch for theirs (Gemma's 1 + w norms and sqrt(D) embedding scale, Qwen 3's qk-norm)."""
    case = get_case(family, tmp_path_factory)
    hf_cls = type(case.hf)
    plain = hf_cls(hf_config(case.family, **FEATURE_OFF[case.family])).eval()
    plain.load_state_dict(case.hf.state_dict())
    assert np.abs(hf_logits(plain, case.ids) - case.hf_logits).max() > 1e-3


@pytest.mark.slow
def test_greedy_generation_matches_hf(case):
    prompt = case.ids[:, :5]
    ours = case.model.generate(prompt, max_new_tokens=20, eos_id=-1)  # 25 tokens: past the window of 8
    with torch.no_grad():
        ref = case.hf.generate(
            torch.as_tensor(prompt),
            attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        ).numpy()
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.slow
def test_export_loads_in_transformers(case):
    out = case.root / "exported"
    maxtext_to_hf.export(str(case.ckpt), str(out), log=quiet)
    assert_bit_exact(safetensors_tensors(case.hf_dir), safetensors_tensors(out))
    with open(out / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    original = case.hf.config.to_dict()
    # Mixtral and Qwen3-MoE configs may leave head_dim unset (hidden_size / heads); the export writes it.
    original["head_dim"] = (
        original.get("head_dim") or original["hidden_size"] // original["num_attention_heads"]
    )
    for key in (
        "model_type",
        "hidden_size",
        "num_key_value_heads",
        "head_dim",
        "rope_parameters",
        "tie_word_embeddings",
    ):
        assert config[key] == original[key], key
    for key in (
        "sliding_window",
        "layer_types",
        "query_pre_attn_scalar",
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "hidden_act",
        "hidden_activation",
        *MOE_CONFIG_FIELDS,
    ):
        assert config.get(key) == original.get(key), key
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert type(reloaded).__name__ == type(case.hf).__name__
    np.testing.assert_array_equal(hf_logits(reloaded, case.ids), case.hf_logits)
    assert transformers.AutoTokenizer.from_pretrained(str(out))(
        "To be"
    ).input_ids == case.model.tokenizer.encode("To be")


@pytest.mark.slow
def test_one_training_step_starts_from_the_converted_weights(case, tmp_path):
    """The trainer's config, model, optimizer and restore of load_parameters_path, on one device (to keep
    compilation small; the full train CLI runs in end_to_end/hf_roundtrip.sh): the first step's loss is
    the Hugging Face model's loss on the same batch, with a finite gradient."""
    import jax

    from MaxText.parallel import mesh as mesh_lib
    from MaxText.checkpoint import checkpointing
    from MaxText.training import trainer
    from MaxText.training.train_state import init_state

    cfg, path = load_config_from_checkpoint(
        [BASE_YML, f"load_parameters_path={case.ckpt}", f"base_output_directory={tmp_path}", "run_name=ft",
         "dataset_type=synthetic", "per_device_batch_size=8", f"max_target_length={SEQ}"],
        require_checkpoint=False,
    )  # fmt: skip
    assert (cfg.base_emb_dim, cfg.vocab_size, cfg.decoder_block) == (
        64,
        PARITY_VOCAB,
        case.model.cfg.decoder_block,
    )
    s = trainer.build(cfg, jax.devices()[:1])
    p_train, _ = trainer.compile_steps(s)
    batch = synthetic_batch(cfg.data_shuffle_seed, 0, 0, range(8), SEQ, PARITY_VOCAB)
    with mesh_lib.activate(s.mesh, s.rules):
        state = init_state(s.model, s.tx, cfg.init_weights_seed, s.shardings)
        target = checkpointing.abstract_with_shardings(s.abstract_state, s.shardings).params
        state = state.replace(params=checkpointing.load_params(path, target))
        state, metrics = p_train(state, trainer.to_device(s, batch))
    loss = float(metrics["loss"])
    log_probs = torch.log_softmax(torch.as_tensor(hf_logits(case.hf, batch["inputs"])), dim=-1).numpy()
    nll = -np.take_along_axis(log_probs, batch["targets"][..., None].astype(np.int64), axis=-1)[..., 0]
    weights = batch["targets_segmentation"]
    # MoE: plus the weighted load-balance loss, which transformers' forward leaves out.
    lb = cfg.load_balance_loss_weight * float(metrics.get("moe_lb_loss", 0.0))
    assert ("moe_lb_loss" in metrics) == (case.family in MOE_FAMILIES)
    assert abs(loss - lb - float((nll * weights).sum() / weights.sum())) < 1e-4
    assert 0 < float(metrics["grad_norm"]) < np.inf and int(state.step) == 1


@pytest.mark.parametrize("case", ["gemma3"], indirect=True)
def test_multimodal_gemma3_converts_its_language_model(case, tmp_path):
    """A Gemma3ForConditionalGeneration checkpoint (text_config, vision tower, legacy language_model.model.*
    names) holding the gemma3 case's language model converts to the same parameters, and its export is
    that language model as Gemma3ForCausalLM."""
    from MaxText.checkpoint import orbax_io

    def read_params(ckpt) -> dict:
        state = os.path.join(str(ckpt), "state")
        return {p: orbax_io.read_leaf(state, leaf) for p, leaf in orbax_io.leaf_metadata(state).items()}

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=4)  # fmt: skip
    config = transformers.Gemma3Config(
        text_config=case.hf.config.to_dict(), vision_config=vision, mm_tokens_per_image=4,
        image_token_index=PARITY_VOCAB - 1, boi_token_index=PARITY_VOCAB - 3, eoi_token_index=PARITY_VOCAB - 2,
    )  # fmt: skip
    mm = transformers.Gemma3ForConditionalGeneration(config).eval()
    mm.model.language_model.load_state_dict(case.hf.model.state_dict())
    mm.save_pretrained(str(tmp_path / "hf"))
    ids = case.ids % (PARITY_VOCAB - 3)  # no image tokens
    with torch.no_grad():
        mm_logits = mm(input_ids=torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(mm_logits, hf_logits(case.hf, ids), atol=1e-5)
    lines = []
    hf_to_maxtext.convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"), log=lines.append)
    assert any(line.startswith("skipping") for line in lines)  # the vision tower and projector
    ours, want = read_params(tmp_path / "ckpt"), read_params(case.ckpt)
    assert sorted(ours) == sorted(want)
    for path, value in want.items():
        np.testing.assert_array_equal(ours[path], value)
    maxtext_to_hf.export(str(tmp_path / "ckpt"), str(tmp_path / "out"), log=quiet)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "out"), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert isinstance(reloaded, transformers.Gemma3ForCausalLM)
    np.testing.assert_array_equal(hf_logits(reloaded, case.ids), case.hf_logits)


@pytest.mark.parametrize("case", ["deepseek3"], indirect=True)
def test_deepseek3_multi_token_prediction_layer_is_skipped(case, tmp_path):
    """Published DeepSeek V3 files carry the MTP module as layer L (= num_hidden_layers): conversion skips it
    (reported) and gives the same parameters."""
    from safetensors.torch import save_file

    from MaxText.checkpoint import orbax_io

    hf_dir = tmp_path / "hf"
    shutil.copytree(case.hf_dir, hf_dir)
    layers = case.hf.config.num_hidden_layers
    save_file(
        {f"model.layers.{layers}.eh_proj.weight": torch.zeros(64, 128)}, str(hf_dir / "mtp.safetensors")
    )
    lines = []
    hf_to_maxtext.convert(str(hf_dir), str(tmp_path / "ckpt"), log=lines.append)
    assert any(line.startswith("skipping 1 tensor") and f"layers.{layers}.eh_proj" in line for line in lines)
    state, want = os.path.join(str(tmp_path / "ckpt"), "state"), os.path.join(str(case.ckpt), "state")
    ours, theirs = orbax_io.leaf_metadata(state), orbax_io.leaf_metadata(want)
    assert sorted(ours) == sorted(theirs)
    for path, leaf in theirs.items():
        np.testing.assert_array_equal(orbax_io.read_leaf(state, ours[path]), orbax_io.read_leaf(want, leaf))
