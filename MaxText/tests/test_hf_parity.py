"""Parity with Hugging Face transformers (float32, offline) for the families that convert.

For each family a tiny random Hugging Face model with the family's special features switched on (GQA and
llama3 rope scaling for Llama; a sliding window shorter than the sequence for Mistral) is saved with
save_pretrained, converted with MaxText.convert, and checked: logits within 1e-4, greedy generation with our
KV cache equal to transformers' generate, the maxtext_to_hf export loading in transformers with bit-exact
tensors and identical logits, and one training step on the converted checkpoint whose loss equals the Hugging
Face model's loss on the same batch. The helpers here also build the models for test_convert and test_api.
"""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# pylint: disable=wrong-import-position
from MaxText import api
from MaxText.config.checkpoint_overlay import load_config_from_checkpoint
from MaxText.conversion import hf_to_maxtext, maxtext_to_hf
from MaxText.input_pipeline.synthetic import synthetic_batch
from MaxText.tests.conftest import BASE_YML

VOCAB, SEQ = 300, 32
COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=256,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Short, so the 16-dim head's wavelengths fall in all three llama3 bands (kept, blended, scaled).
    "original_max_position_embeddings": 64,
}
FAMILIES = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": LLAMA3_ROPE}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "llama2_tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"num_key_value_heads": 4, "tie_word_embeddings": True},
    ),
}
# What switches each family's special feature off (to show the test inputs exercise it).
FEATURE_OFF = {
    "llama3": {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}},
    "mistral": {"sliding_window": None},
}
TEXTS = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer"]


def quiet(_):
    pass


def hf_config(family: str, **overrides):
    config_cls, _, extra = FAMILIES[family]
    return getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})


def make_tokenizer(directory) -> None:
    """A byte-level BPE tokenizer.json (vocab 300, <s>/</s>, BOS added) saved the transformers way."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS * 20, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(directory))


def make_hf_model(
    family: str,
    directory,
    dtype=None,
    seed: int = 0,
    tokenizer: bool = True,
    max_shard_size=None,
    **overrides,
):
    """Saves a tiny random Hugging Face model of `family` (safetensors) to `directory`; returns it in eval mode."""
    torch.manual_seed(seed)
    model = getattr(transformers, FAMILIES[family][1])(hf_config(family, **overrides))
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    if tokenizer:
        make_tokenizer(directory)
    return model.eval()


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.float().numpy()


def random_ids(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=shape, dtype=np.int64)


def safetensors_tensors(directory) -> dict:
    from safetensors import safe_open

    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(directory, name), framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def assert_bit_exact(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name, x in a.items():
        y = b[name]
        assert (x.dtype, tuple(x.shape)) == (y.dtype, tuple(y.shape)), name
        assert torch.equal(x.view(-1).view(torch.uint8), y.view(-1).view(torch.uint8)), name


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


@pytest.fixture(scope="module", params=["llama3", "mistral"])
def case(request, tmp_path_factory):
    return Case(request.param, tmp_path_factory.mktemp(request.param))


def test_logits_match_hf(case):
    ours = case.model.logits(case.ids)
    assert ours.dtype == np.float32 and ours.shape == (2, SEQ, VOCAB)
    diff = float(np.abs(ours - case.hf_logits).max())
    print(f"\n{case.family}: max |logits - HF| = {diff:.3e}")
    assert diff <= 1e-4


def test_inputs_exercise_the_family_feature(case):
    hf_cls = type(case.hf)
    plain = hf_cls(hf_config(case.family, **FEATURE_OFF[case.family])).eval()
    plain.load_state_dict(case.hf.state_dict())
    assert np.abs(hf_logits(plain, case.ids) - case.hf_logits).max() > 1e-3


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


def test_export_loads_in_transformers(case):
    out = case.root / "exported"
    maxtext_to_hf.export(str(case.ckpt), str(out), log=quiet)
    assert_bit_exact(safetensors_tensors(case.hf_dir), safetensors_tensors(out))
    with open(out / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    original = case.hf.config.to_dict()
    for key in (
        "model_type",
        "hidden_size",
        "num_key_value_heads",
        "head_dim",
        "rope_parameters",
        "tie_word_embeddings",
    ):
        assert config[key] == original[key], key
    assert config.get("sliding_window") == original.get("sliding_window")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    np.testing.assert_array_equal(hf_logits(reloaded, case.ids), case.hf_logits)
    assert transformers.AutoTokenizer.from_pretrained(str(out))(
        "To be"
    ).input_ids == case.model.tokenizer.encode("To be")


def test_one_training_step_starts_from_the_converted_weights(case, tmp_path):
    from MaxText.training import trainer

    cfg, _ = load_config_from_checkpoint(
        [BASE_YML, f"load_parameters_path={case.ckpt}", f"base_output_directory={tmp_path}", "run_name=ft",
         "dataset_type=synthetic", "steps=1", "enable_checkpointing=false", "per_device_batch_size=1",
         f"max_target_length={SEQ}", "eval_interval=0", "eval_steps=1", "log_period=1", "peak_tflops_per_device=1"],
        require_checkpoint=False,
    )  # fmt: skip
    assert (cfg.base_emb_dim, cfg.vocab_size, cfg.decoder_block) == (64, VOCAB, case.model.cfg.decoder_block)
    assert trainer.train(cfg) == 0
    with open(tmp_path / "ft" / "metrics.jsonl", encoding="utf-8") as f:
        loss = next(json.loads(line)["loss"] for line in f if '"loss"' in line)
    batch = synthetic_batch(cfg.data_shuffle_seed, 0, 0, range(8), SEQ, VOCAB)
    log_probs = torch.log_softmax(torch.as_tensor(hf_logits(case.hf, batch["inputs"])), dim=-1).numpy()
    nll = -np.take_along_axis(log_probs, batch["targets"][..., None].astype(np.int64), axis=-1)[..., 0]
    weights = batch["targets_segmentation"]
    assert abs(loss - float((nll * weights).sum() / weights.sum())) < 1e-4
