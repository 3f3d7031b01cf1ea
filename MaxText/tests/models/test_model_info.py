"""model_info: parameter counts of every shipped YAML against the official Hugging Face configs (counted by
transformers on the meta device, offline), FLOPs with per-layer windows, bytes, and the command line."""

import os
import subprocess
import sys

import pytest

from MaxText import model_info, paths
from MaxText.config import load_config, model_config
from MaxText.config.loader import available_models
from MaxText.tests.helpers import BASE_YML
from MaxText.training import flops

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _dims(d, f, layers, n, k, h, v, tie, **extra):
    return dict(
        hidden_size=d,
        intermediate_size=f,
        num_hidden_layers=layers,
        num_attention_heads=n,
        num_key_value_heads=k,
        head_dim=h,
        vocab_size=v,
        tie_word_embeddings=tie,
        **extra,
    )


def _mla(q_lora_rank):
    return dict(q_lora_rank=q_lora_rank or None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                v_head_dim=128)  # fmt: skip


def _experts(routed, top_k, shared, size, dense_first):
    return dict(n_routed_experts=routed, num_experts_per_tok=top_k, n_shared_experts=shared,
                moe_intermediate_size=size, first_k_dense_replace=dense_first)  # fmt: skip


# The published configs' dimensions (../shared/reference/models.md), independent of our YAMLs.
_LLAMA2_7B = _dims(4096, 11008, 32, 32, 32, 128, 32000, False)
_LLAMA3_70B = _dims(8192, 28672, 80, 64, 8, 128, 128256, False)
HF_CONFIGS = {
    "llama2-7b": ("LlamaConfig", _LLAMA2_7B),
    "llama2-13b": ("LlamaConfig", _dims(5120, 13824, 40, 40, 40, 128, 32000, False)),
    "llama2-70b": ("LlamaConfig", _dims(8192, 28672, 80, 64, 8, 128, 32000, False)),
    "llama3-8b": ("LlamaConfig", _dims(4096, 14336, 32, 32, 8, 128, 128256, False)),
    "llama3-70b": ("LlamaConfig", _LLAMA3_70B),
    "llama3.1-8b": ("LlamaConfig", _dims(4096, 14336, 32, 32, 8, 128, 128256, False)),
    "llama3.1-70b": ("LlamaConfig", _LLAMA3_70B),
    "llama3.1-405b": ("LlamaConfig", _dims(16384, 53248, 126, 128, 8, 128, 128256, False)),
    "llama3.3-70b": ("LlamaConfig", _LLAMA3_70B),
    "mistral-7b": ("MistralConfig", _dims(4096, 14336, 32, 32, 8, 128, 32000, False)),
    "gemma-2b": ("GemmaConfig", _dims(2048, 16384, 18, 8, 1, 256, 256000, True)),
    "gemma-7b": ("GemmaConfig", _dims(3072, 24576, 28, 16, 16, 256, 256000, True)),
    "gemma2-2b": ("Gemma2Config", _dims(2304, 9216, 26, 8, 4, 256, 256000, True)),
    "gemma2-9b": ("Gemma2Config", _dims(3584, 14336, 42, 16, 8, 256, 256000, True)),
    "gemma2-27b": ("Gemma2Config", _dims(4608, 36864, 46, 32, 16, 128, 256000, True)),
    "gemma3-1b": ("Gemma3TextConfig", _dims(1152, 6912, 26, 4, 1, 256, 262144, True)),
    "gemma3-4b": ("Gemma3TextConfig", _dims(2560, 10240, 34, 8, 4, 256, 262208, True)),
    "gemma3-12b": ("Gemma3TextConfig", _dims(3840, 15360, 48, 16, 8, 256, 262208, True)),
    "gemma3-27b": ("Gemma3TextConfig", _dims(5376, 21504, 62, 32, 16, 128, 262208, True)),
    "qwen3-0.6b": ("Qwen3Config", _dims(1024, 3072, 28, 16, 8, 128, 151936, True)),
    "qwen3-1.7b": ("Qwen3Config", _dims(2048, 6144, 28, 16, 8, 128, 151936, True)),
    "qwen3-4b": ("Qwen3Config", _dims(2560, 9728, 36, 32, 8, 128, 151936, True)),
    "qwen3-8b": ("Qwen3Config", _dims(4096, 12288, 36, 32, 8, 128, 151936, False)),
    "qwen3-14b": ("Qwen3Config", _dims(5120, 17408, 40, 40, 8, 128, 151936, False)),
    "qwen3-32b": ("Qwen3Config", _dims(5120, 25600, 64, 64, 8, 128, 151936, False)),
    "olmo3-7b": ("Olmo3Config", _dims(4096, 11008, 32, 32, 32, 128, 100278, False)),
    "olmo3-32b": ("Olmo3Config", _dims(5120, 27648, 64, 40, 8, 128, 100278, False)),
    # ---- MoE ----
    "mixtral-8x7b": (
        "MixtralConfig",
        _dims(4096, 14336, 32, 32, 8, 128, 32000, False, num_local_experts=8, num_experts_per_tok=2),
    ),
    "mixtral-8x22b": (
        "MixtralConfig",
        _dims(6144, 16384, 56, 48, 8, 128, 32768, False, num_local_experts=8, num_experts_per_tok=2),
    ),
    "qwen3-30b-a3b": (
        "Qwen3MoeConfig",
        _dims(
            2048,
            6144,
            48,
            32,
            4,
            128,
            151936,
            False,
            num_experts=128,
            num_experts_per_tok=8,
            moe_intermediate_size=768,
        ),
    ),
    "deepseek2-16b": (
        "DeepseekV2Config",
        _dims(2048, 10944, 27, 16, 16, 192, 102400, False, **_mla(0), **_experts(64, 6, 2, 1408, 1)),
    ),
    "deepseek2-236b": (
        "DeepseekV2Config",
        _dims(5120, 12288, 60, 128, 128, 192, 102400, False, **_mla(1536), **_experts(160, 6, 2, 1536, 1)),
    ),
    "deepseek3-671b": (
        "DeepseekV3Config",
        _dims(7168, 18432, 61, 128, 128, 192, 129280, False, **_mla(1536), **_experts(256, 8, 1, 2048, 3)),
    ),
    "qwen3-235b-a22b": (
        "Qwen3MoeConfig",
        _dims(
            4096,
            12288,
            94,
            64,
            4,
            128,
            151936,
            False,
            num_experts=128,
            num_experts_per_tok=8,
            moe_intermediate_size=1536,
        ),
    ),
}
NO_HF_CHECKPOINT = ("gpt3-175b", "gpt3-6b", "gpt3-52k", "test-tiny")


def _mcfg(*overrides):
    return model_config(load_config([BASE_YML, "run_name=t", *overrides]))


def _hf_count(name: str) -> int:
    config_cls, dims = HF_CONFIGS[name]
    cfg = getattr(transformers, config_cls)(**dims)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    count = sum(p.numel() for p in model.parameters())  # tied weights are one Parameter, counted once
    # DeepSeek V3's router score-correction bias is a buffer in transformers; we count it as a parameter.
    return count + sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))


def test_every_shipped_model_with_a_checkpoint_has_a_reference():
    assert sorted(HF_CONFIGS) == sorted(m for m in available_models() if m not in NO_HF_CHECKPOINT)


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_total_params_match_hugging_face(name):
    ours = model_info.model_info(_mcfg(f"model_name={name}"), 256)["total_params"]
    want = _hf_count(name)
    print(f"\n{name}: ours {ours:,} HF {want:,}")
    assert ours == want


def test_published_counts():
    assert model_info.model_info(_mcfg("model_name=llama2-7b"), 256)["total_params"] == 6_738_415_616
    assert model_info.model_info(_mcfg("model_name=llama3-8b"), 256)["total_params"] == 8_030_261_248
    gpt3 = model_info.model_info(_mcfg("model_name=gpt3-175b"), 2048)["total_params"]
    assert abs(gpt3 - 175e9) < 0.01 * 175e9


@pytest.mark.parametrize(
    "overrides", [["model_name=llama3-8b"], ["model_name=mistral-7b", "max_target_length=8192"]]
)
def test_flops_equal_the_trainer_formula_for_uniform_layers(overrides):
    cfg = load_config([BASE_YML, "run_name=t", *overrides])
    mcfg, length = model_config(cfg), cfg.max_target_length
    want = flops.train_flops_per_step(mcfg, 1, length) / length
    assert model_info.model_info(mcfg, length)["train_flops_per_token"] == round(want)


def test_flops_apply_windows_only_to_local_layers():
    mcfg, length = _mcfg("model_name=gemma2-2b"), 8192  # window 4096 < length on the 13 local layers
    full = flops.train_flops_per_step(mcfg.replace(sliding_window_size=0), 1, length) / length
    saved = 12 * 13 * mcfg.num_query_heads * mcfg.head_dim / length
    saved *= flops.attended_pairs(length, 0) - flops.attended_pairs(length, 4096)
    assert model_info.model_info(mcfg, length)["train_flops_per_token"] == round(full - saved)
    g3 = _mcfg("model_name=gemma3-1b")  # 26 layers: 4 groups of (5 local, 1 global) + 2 local
    assert flops.attended_pairs_all_layers(g3, 2048) == 4 * flops.attended_pairs(2048, 0) + 22 * (
        flops.attended_pairs(2048, 512)
    )


def test_bytes_count_params_in_weight_dtype_and_adam_in_float32():
    total = model_info.model_info(_mcfg("model_name=gpt3-52k"), 64)["total_params"]
    for dtype, size in (("float32", 4), ("bfloat16", 2)):
        got = model_info.model_info(_mcfg("model_name=gpt3-52k", f"weight_dtype={dtype}"), 64)
        assert got["bytes_params_and_optimizer"] == (size + 8) * total


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=paths.REPO_ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "MaxText.model_info", "configs/base.yml", *args],
        cwd=paths.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_command_line_prints_four_lines():
    proc = _cli("model_name=gemma3-1b", "max_target_length=2048")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        "total_params",
        "active_params",
        "train_flops_per_token",
        "bytes_params_and_optimizer",
    ]
    assert lines[0] == "total_params: 999885952" and lines[1] == "active_params: 999885952"
    proc = _cli("model_name=gemma3-1b", "sliding_window_pattern=0")
    assert proc.returncode == 2 and "sliding_window_pattern=0" in proc.stderr
