"""What more than one test file needs: the tiny configs, in-process training runs, the tiny decoder and its
paged decode loop, engine requests, small datasets in every format the input pipeline reads, run
directories, and the tiny random Hugging Face models (with their case tables) that the parity, conversion,
family and api tests compare against. Test files import from here only, never from each other.

torch, transformers, tokenizers, safetensors and datasets are imported inside the functions that use them,
so importing this module stays cheap (conftest imports it before every session)."""

import functools
import json
import math
import os
import shutil
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from MaxText import input_pipeline, paths
from MaxText.checkpoint import checkpointing, orbax_io
from MaxText.checkpoint.config_overlay import saved_model_keys
from MaxText.config import load_config, model_config
from MaxText.inference.engine import SamplingParams
from MaxText.inference.batcher import Request
from MaxText.inference.generate import decode_step, prefill
from MaxText.inference.kv_cache import init_cache, with_page_table, without_page_table
from MaxText.input_pipeline import BUILTIN_TOKENIZER_PATH, DataConfig, load_tokenizer, writers
from MaxText.models.transformer import dummy_inputs, init_params_boxed, make_model
from MaxText.parallel import mesh as mesh_lib
from MaxText.training import trainer
from MaxText.training.train_state import init_state

BASE_YML = os.path.join(paths.REPO_ROOT, "configs", "base.yml")

# Small model + run settings shared by tests that train: fast to compile on 2 CPU cores.
TINY = [
    "model_name=test-tiny",
    "dataset_type=synthetic",
    "enable_checkpointing=false",
    "steps=3",
    "log_period=1",
    "eval_interval=0",
    "eval_steps=1",
    "max_target_length=32",
    "peak_tflops_per_device=1",
]


# ---------------------------------------------------------------------------------------------- training runs


def run_steps(overrides, num_devices=1, steps=3):
    """Trains `steps` steps in-process on the first `num_devices` devices; returns (losses, final state)."""
    cfg = load_config([BASE_YML, *TINY, *overrides])
    s = trainer.build(cfg, jax.devices()[:num_devices])
    p_train, _ = trainer.compile_steps(s)
    it = input_pipeline.make_train_iterator(trainer.data_config(cfg, s.global_batch))
    losses = []
    with mesh_lib.activate(s.mesh, s.rules):
        state = init_state(s.model, s.tx, cfg.init_weights_seed, s.shardings)
        for _ in range(steps):
            state, metrics = p_train(state, trainer.to_device(s, next(it)))
            losses.append(float(metrics["loss"]))
    return np.array(losses), jax.device_get(state)


def train_run(base, run_name, steps: int, overrides) -> list:
    """Trains run_name under `base` to `steps` with a checkpoint every 2 steps and a 6-step LR schedule
    (resuming it if it has a checkpoint); returns the losses this invocation logged."""
    cfg = load_config(
        [BASE_YML, *TINY, *overrides, "enable_checkpointing=true", "checkpoint_period=2",
         "learning_rate_schedule_steps=6", f"steps={steps}", f"base_output_directory={base}",
         f"run_name={run_name}"]
    )  # fmt: skip
    assert trainer.train(cfg) == 0
    with open(os.path.join(base, run_name, "metrics.jsonl"), encoding="utf-8") as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def fork_run(base, source: str, step: int, run_name: str) -> None:
    """A new run whose only checkpoint is `source`'s step (so it resumes from there)."""
    shutil.copytree(
        os.path.join(base, source, "checkpoints", str(step)),
        os.path.join(base, run_name, "checkpoints", str(step)),
    )


def run_benchmark(cmd: list, timeout: int) -> subprocess.CompletedProcess:
    """Runs a benchmark script from the repo root on one CPU device (env_without_device_count); bounded."""
    return subprocess.run(
        cmd, cwd=paths.REPO_ROOT, env=env_without_device_count(), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def env_without_device_count():
    """The test session forces 8 fake devices; a benchmark subprocess must pick its own default of one."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    return env


# ------------------------------------------------------------------------------ the tiny decoder and decoding


def tiny_model(*overrides):
    """(ModelConfig, model, unboxed params) of the TINY model at highest matmul precision."""
    cfg = model_config(load_config([BASE_YML, *TINY, "matmul_precision=highest", *overrides]))
    model = make_model(cfg)
    params = jax.tree.map(
        lambda x: x.value if hasattr(x, "value") else x,
        model.init(jax.random.key(3), *dummy_inputs(1, 8), "train")["params"],
        is_leaf=lambda x: hasattr(x, "value"),
    )
    return cfg, model, params


def decode_ids(b=3, t=14):
    """[b, t] random token ids below 256 (the tiny model's vocabulary)."""
    return jax.random.randint(jax.random.key(7), (b, t), 0, 256, jnp.int32)


def full_logits(model, params, ids):
    """Logits of the full forward pass ("train" mode, one segment) as a numpy array."""
    b, t = ids.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    logits, _ = model.apply(
        {"params": params}, jnp.asarray(ids), positions, jnp.ones((b, t), jnp.int32), "train"
    )
    return np.asarray(logits)


def greedy_reference(model, params, prompt, new_tokens):
    """Greedy continuation by re-running the full forward pass on the growing sequence."""
    seq = list(prompt)
    for _ in range(new_tokens):
        n = len(seq)
        logits, _ = model.apply(
            {"params": params}, jnp.asarray([seq]), jnp.arange(n)[None], jnp.ones((1, n), jnp.int32), "train"
        )
        seq.append(int(jnp.argmax(logits[0, -1])))
    return seq[len(prompt) :]


# Paged decoding: reference length, page size and the rows' prompt lengths.
PAGED_T, PAGE_SIZE = 14, 4
PAGED_LENGTHS = np.array([4, 9, 1, 6, 10])
PAGED_B = len(PAGED_LENGTHS)


def prefill_then_decode(model, params, ids, cache_for, steps):
    """Prefill (bucket 10) then `steps` decode steps; cache_for(cache or None) wraps/unwraps the cache.
    Returns the last-prompt logits and the per-step logits [steps, B, V] (rows stop at PAGED_T - 1)."""
    padded = jnp.where(jnp.arange(10)[None] < PAGED_LENGTHS[:, None], ids[:, :10], 0)
    pre = jax.jit(lambda p, i, l, c: prefill(model, p, i, l, c))
    step = jax.jit(lambda p, t, pos, c: decode_step(model, p, t, pos, c))
    last, cache = pre(params, padded, jnp.asarray(PAGED_LENGTHS), cache_for(None))
    outs, positions = [], np.asarray(PAGED_LENGTHS)
    for _ in range(steps):
        pos = np.minimum(positions, PAGED_T - 1)
        logits, cache = step(params, ids[np.arange(PAGED_B), pos], jnp.asarray(pos), cache_for(cache))
        outs.append(np.asarray(logits))
        positions = positions + 1
    return np.asarray(last), np.stack(outs), cache


def paged_cache_for(manager, pool):
    """(cache_for, page tables): each of the PAGED_B rows gets pages for PAGED_T + 1 tokens from manager."""
    tables = np.stack([manager.allocate(b, PAGED_T + 1) for b in range(PAGED_B)])
    state = {"pool": pool}

    def cache_for(cache):
        if cache is not None:
            state["pool"] = without_page_table(cache)
        return with_page_table(state["pool"], jnp.asarray(tables))

    return cache_for, tables


# Engine requests: prompts, token budgets and sampling (0 and 3 are greedy).
ENGINE_PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [3], [40, 41, 42, 43, 44], [7, 7, 7, 7]]
ENGINE_MAX_TOKENS = [6, 4, 9, 5, 7]
ENGINE_SAMPLING = [
    SamplingParams(),
    SamplingParams(temperature=0.9, seed=1),
    SamplingParams(temperature=1.2, top_k=5, seed=2),
    SamplingParams(),
    SamplingParams(temperature=0.7, top_p=0.8, seed=3),
]


def serve_requests(batcher, indices, late=()):
    """Runs requests (indices into ENGINE_PROMPTS) through the batcher; `late` ones join after 2 steps."""
    out = {i: [] for i in (*indices, *late)}

    def request(i):
        return Request(
            ENGINE_PROMPTS[i],
            ENGINE_MAX_TOKENS[i],
            ENGINE_SAMPLING[i],
            ignore_eos=True,
            on_event=out[i].append,
        )

    for i in indices:
        batcher.submit(request(i))
    for _ in range(2):
        batcher.step()
    for i in late:
        batcher.submit(request(i))
    batcher.run_until_idle()
    for i, events in out.items():
        assert [e.finished for e in events] == [False] * (len(events) - 1) + [True]
    return {i: [e.token for e in events if e.token is not None] for i, events in out.items()}


# ------------------------------------------------------------------------------------------------ checkpoints


def read_checkpoint_params(ckpt) -> dict:
    """{path tuple: array} of every parameter of an orbax checkpoint (host memory)."""
    state = os.path.join(checkpointing.resolve_step_dir(str(ckpt)), "state")
    return {p: orbax_io.read_leaf(state, leaf) for p, leaf in orbax_io.leaf_metadata(state).items()}


def write_run_dir(tmp_path, ckpt, scan_layers: bool) -> str:
    """A run directory as the trainer writes it: checkpoints/<step>/{state, data_iter, meta}, steps 3 and 5."""
    cfg = load_config(
        [BASE_YML, f"scan_layers={str(scan_layers).lower()}"], overlay=saved_model_keys(str(ckpt))
    )
    params = {}
    for path, array in read_checkpoint_params(ckpt).items():
        node = params
        for key in path[1:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = array
    if not scan_layers:  # the scan_layers=false tree: decoder/layers_<i>/... without the layer axis
        layers = params["decoder"].pop("layers")
        for i in range(cfg.base_num_decoder_layers):
            params["decoder"][f"layers_{i}"] = orbax_io.map_leaves(
                lambda x, i=i: np.take(x, i, axis=1), layers
            )
    run = tmp_path / f"run_{scan_layers}"
    ckpt_mgr = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(run)), 0, False)
    meta = {"config": checkpointing.config_dict(cfg), "tokenizer": None}
    for step, scale in ((3, 1.0), (5, 2.0)):
        state = {
            "step": np.int32(step),
            "params": orbax_io.map_leaves(lambda x, s=scale: x * x.dtype.type(s), params),
        }
        state["opt_state"] = {"mu": state["params"]}
        ckpt_mgr.save(step, state, {"step": step}, meta)
    ckpt_mgr.close()
    return str(run)


def save_random_params(directory: str, cfg, step: int = 1, seed: int = 0) -> str:
    """Saves cfg's model with random weights as checkpoint `step` of `directory` (params only, the run's
    config in meta, as a training run's step holds them); returns the step directory."""
    params = nn.unbox(init_params_boxed(make_model(model_config(cfg)), jax.random.key(seed)))
    ckpt = checkpointing.Checkpointer(directory, 1, False)
    ckpt.save(step, {"params": params}, {}, {"config": checkpointing.config_dict(cfg)})
    ckpt.close()
    return os.path.join(directory, str(step))


# --------------------------------------------------------------------------------- small datasets (no network)

NUM_DOCS = 40
TFDS_NAME = "maxtext_tiny_text:1.0.0"


def texts(n: int = NUM_DOCS, tag: str = "") -> list[str]:
    """n distinct documents of 5 to ~60 tokens."""
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "mind"]
    rng = np.random.default_rng(len(tag) + n)
    return [f"{tag}doc {i}: " + " ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for i in range(n)]


def token_ids(docs: list[str]) -> list[list[int]]:
    tok = load_tokenizer(BUILTIN_TOKENIZER_PATH)
    return [tok.encode(t) for t in docs]


def write_grain(root: str) -> dict[str, str]:
    """ArrayRecord (2 text shards, 1 ids shard) and Parquet (text, ids); returns name -> glob."""
    os.makedirs(root, exist_ok=True)
    docs = texts()
    half = NUM_DOCS // 2
    writers.write_array_record(f"{root}/text-0.array_record", [{"text": t} for t in docs[:half]])
    writers.write_array_record(f"{root}/text-1.array_record", [{"text": t} for t in docs[half:]])
    writers.write_array_record(f"{root}/ids.array_record", [{"ids": ids} for ids in token_ids(docs)])
    writers.write_parquet(f"{root}/text.parquet", {"text": docs})
    writers.write_parquet(f"{root}/ids.parquet", {"ids": token_ids(docs)})
    return {
        "array_record": f"{root}/text-*.array_record",
        "array_record_ids": f"{root}/ids.array_record",
        "parquet": f"{root}/text.parquet",
        "parquet_ids": f"{root}/ids.parquet",
    }


def write_hf(root: str) -> dict[str, tuple[str, str]]:
    """json/jsonl, parquet, text, arrow files and a save_to_disk dir; returns name -> (hf_path, files)."""
    import datasets  # pylint: disable=import-outside-toplevel

    os.makedirs(root, exist_ok=True)
    docs = texts()
    with open(f"{root}/data.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in docs)
    writers.write_parquet(f"{root}/data.parquet", {"text": docs})
    with open(f"{root}/data.txt", "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in docs)
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(f"{root}/saved")
    arrow = sorted(n for n in os.listdir(f"{root}/saved") if n.endswith(".arrow"))[0]
    return {
        "json": ("json", f"{root}/data.jsonl"),
        "parquet": ("parquet", f"{root}/data.parquet"),
        "text": ("text", f"{root}/data.txt"),
        "arrow": ("arrow", f"{root}/saved/{arrow}"),
        "save_to_disk": (f"{root}/saved", ""),
    }


def write_tfds(data_dir: str, file_format: str = "array_record") -> str:
    """A tiny TFDS dataset (train 40, validation 8 documents) under data_dir; returns its name:version."""
    _tfds_builder_class()(data_dir=data_dir, file_format=file_format).download_and_prepare()
    return TFDS_NAME


@functools.cache
def _tfds_builder_class():
    """The builder class, defined once: tfds registers every builder class by name."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    class MaxtextTinyText(tfds.core.GeneratorBasedBuilder):
        """Builds offline from in-memory text."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            del dl_manager
            return {
                "train": self._generate_examples(texts()),
                "validation": self._generate_examples(texts(8, "v")),
            }

        def _generate_examples(self, docs):  # pylint: disable=arguments-differ
            for i, t in enumerate(docs):
                yield i, {"text": t}

    return MaxtextTinyText


def data_config(dataset_type: str, **kw) -> DataConfig:
    """A small DataConfig (T=32, global batch 8) for dataset_type."""
    base = {
        "dataset_type": dataset_type,
        "tokenizer_path": BUILTIN_TOKENIZER_PATH,
        "max_target_length": 32,
        "global_batch_size": 8,
        "vocab_size": 4096,
        "data_shuffle_seed": 3,
        "eval_fraction": 0.1,
    }
    base.update(kw)
    return DataConfig(**base)


# ------------------------------------------------------------------- tiny random Hugging Face models: MoE rows

MOE_HF_COMMON = dict(num_experts_per_tok=2, num_hidden_layers=2, tie_word_embeddings=False)
# YaRN stretched 4x from 8 positions, so the sequence of 24 sees interpolated, ramped and kept frequencies.
_YARN = dict(
    rope_type="yarn",
    rope_theta=1e4,
    factor=4.0,
    original_max_position_embeddings=8,
    beta_fast=32,
    beta_slow=1,
)
# MLA with V != P + O, 1 dense layer then 2 MoE layers, 8 experts in 4 groups (best 2), top-2, 1 shared.
_DEEPSEEK = dict(
    num_hidden_layers=3,
    num_key_value_heads=4,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    head_dim=8,  # transformers sizes the rotary tables by head_dim: the rope part
    v_head_dim=12,
    n_routed_experts=8,
    n_shared_experts=1,
    moe_intermediate_size=32,
    first_k_dense_replace=1,
    n_group=4,
    topk_group=2,
)
# family -> (config class, model class, MoE features on), used with MOE_HF_COMMON. A row named
# "<decoder_block>_<variant>" is that family with another layer pattern.
MOE_HF_MODELS = {
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        dict(
            num_local_experts=8, sliding_window=6, rope_parameters={"rope_type": "default", "rope_theta": 1e4}
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            num_experts=8,
            moe_intermediate_size=32,
            norm_topk_prob=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        ),
    ),
    # A dense-MLP first layer (of intermediate_size), then two MoE layers: stacks dense_layers, moe_layers.
    "qwen3_moe_dense": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            num_hidden_layers=3,
            mlp_only_layers=[0],
            num_experts=8,
            moe_intermediate_size=32,
            norm_topk_prob=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        ),
    ),
    "deepseek2": (
        "DeepseekV2Config",
        "DeepseekV2ForCausalLM",
        dict(
            **_DEEPSEEK,
            q_lora_rank=None,
            topk_method="group_limited_greedy",
            routed_scaling_factor=2.0,
            rope_parameters={**_YARN, "mscale": 0.707, "mscale_all_dim": 0.707},
        ),
    ),
    "deepseek3": (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        dict(
            **_DEEPSEEK,
            q_lora_rank=24,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            rope_parameters={**_YARN, "mscale": 0.8, "mscale_all_dim": 1.0},
        ),
    ),
}


def randomize_router_bias(hf) -> None:
    """DeepSeek V3's score-correction bias is zeros at init; random values make it change the choice."""
    import torch  # pylint: disable=import-outside-toplevel

    with torch.no_grad():
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.3 * torch.randn_like(b))


def hf_logits(model, ids) -> np.ndarray:
    """A transformers model's float32 logits for integer ids."""
    import torch  # pylint: disable=import-outside-toplevel

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.float().numpy()


# ------------------------------------- tiny random Hugging Face models mapped directly onto ours (no converter)

FAMILY_VOCAB, FAMILY_B, FAMILY_T = 128, 2, 24
FAMILY_COMMON = dict(
    vocab_size=FAMILY_VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    initializer_range=0.15,
    attn_implementation="eager",
)


def family_ids(seed=0, shape=(FAMILY_B, FAMILY_T)):
    """Random ids below FAMILY_VOCAB (numpy)."""
    return np.random.default_rng(seed).integers(0, FAMILY_VOCAB, size=shape)


def family_model_config(keys: dict, *overrides):
    """Our ModelConfig for Hugging Face config keys (hf_config_to_keys), at highest matmul precision."""
    cfg = load_config([BASE_YML, "run_name=t", "matmul_precision=highest", *overrides], overlay=keys)
    return model_config(cfg)


def decode_matches_forward(cfg, model, params):
    """Prefill a padded bucket, then decode token by token: every step's logits equal the forward pass."""
    ids = jnp.asarray(family_ids(7, (3, FAMILY_T)))
    lengths = np.array([4, 9, 1])
    want = full_logits(model, params, np.asarray(ids))
    bucket = 10
    padded = jnp.where(jnp.arange(bucket)[None] < lengths[:, None], ids[:, :bucket], 0)
    cache = init_cache(cfg, 3, FAMILY_T + 2)
    last, cache = jax.jit(lambda p, i, l, c: prefill(model, p, i, l, c))(
        params, padded, jnp.asarray(lengths), cache
    )
    np.testing.assert_allclose(last, want[np.arange(3), lengths - 1], atol=2e-5)
    step = jax.jit(lambda p, t, pos, c: decode_step(model, p, t, pos, c))
    positions = lengths.copy()
    for _ in range(FAMILY_T - int(lengths.min())):
        pos = np.minimum(positions, FAMILY_T - 1)
        logits, cache = step(params, ids[np.arange(3), pos], jnp.asarray(pos), cache)
        for b in range(3):
            if positions[b] < FAMILY_T:
                np.testing.assert_allclose(logits[b], want[b, positions[b]], atol=2e-5)
        positions = positions + 1


# ----------------------------- tiny random Hugging Face models through the converter (parity, convert, api)

PARITY_VOCAB = 300
PARITY_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=PARITY_VOCAB,
    max_position_embeddings=256,
    attn_implementation="eager",  # transformers' soft caps need it
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
GEMMA3_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
    "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0},
}
# OLMo 3: plain RoPE on the sliding layers; YaRN (4x from 64 positions, its attention_factor stated as the
# released files do) on the full ones, whose small base puts the 16-dim head's frequencies in all three
# YaRN bands (kept, ramped, interpolated).
OLMO3_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {
        "rope_type": "yarn",
        "rope_theta": 100.0,
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "attention_factor": 0.1 * math.log(4.0) + 1.0,
    },
}
_GEMMA2 = dict(
    num_hidden_layers=4,
    sliding_window=8,
    query_pre_attn_scalar=24,
    attn_logit_softcapping=2.0,
    final_logit_softcapping=3.0,
)
# family -> (config class, model class, special features on). Windows of 8 < the 25 generated tokens; gemma3
# has groups of 3 layers, so 5 layers are one (local, local, global) group and a tail of 2 local layers;
# olmo3's 5 layers are one (sliding x 3, full) group and a tail of 1 sliding layer.
PARITY_MODELS = {
    "llama2": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 4}),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": LLAMA3_ROPE}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"num_key_value_heads": 1, "head_dim": 32}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", _GEMMA2),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(num_hidden_layers=5, sliding_window=8, sliding_window_pattern=3, query_pre_attn_scalar=24,
             rope_parameters=GEMMA3_ROPE),
    ),  # fmt: skip
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"tie_word_embeddings": False, "head_dim": 8}),
    "olmo3": (
        "Olmo3Config",
        "Olmo3ForCausalLM",
        dict(num_hidden_layers=5, sliding_window=8, rope_parameters=OLMO3_ROPE, pad_token_id=0,
             eos_token_id=1),
    ),  # fmt: skip
    "llama2_tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"num_key_value_heads": 4, "tie_word_embeddings": True},
    ),
}
PARITY_MODELS.update(
    {family: (c, m, {**MOE_HF_COMMON, **extra}) for family, (c, m, extra) in MOE_HF_MODELS.items()}
)
# The families test_hf_parity checks (and end_to_end/hf_roundtrip.sh runs); llama2_tied is test_convert's.
PARITY_FAMILIES = [
    "llama2",
    "llama3",
    "mistral",
    "gemma",
    "gemma2",
    "gemma3",
    "qwen3",
    "olmo3",
    *MOE_HF_MODELS,
]
PARITY_TEXTS = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer"]


def quiet(_):
    pass


def hf_config(family: str, **overrides):
    """The transformers config of PARITY_MODELS[family] (with overrides)."""
    import transformers  # pylint: disable=import-outside-toplevel

    config_cls, _, extra = PARITY_MODELS[family]
    return getattr(transformers, config_cls)(**{**PARITY_COMMON, **extra, **overrides})


def make_tokenizer(directory) -> None:
    """A byte-level BPE tokenizer.json (vocab 300, <s>/</s>, BOS added) saved the transformers way."""
    # pylint: disable=import-outside-toplevel
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    bpe_trainer = trainers.BpeTrainer(
        vocab_size=PARITY_VOCAB,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(PARITY_TEXTS * 20, bpe_trainer)
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
    # pylint: disable=import-outside-toplevel
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, PARITY_MODELS[family][1])(hf_config(family, **overrides))
    with torch.no_grad():  # norms start at zero (1 + w) or one: random values exercise them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
        randomize_router_bias(model)
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    if tokenizer:
        make_tokenizer(directory)
    return model.eval()


def random_ids(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, PARITY_VOCAB, size=shape, dtype=np.int64)


def safetensors_tensors(directory) -> dict:
    """{name: torch tensor} of every *.safetensors file in directory."""
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel

    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(directory, name), framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def assert_bit_exact(a: dict, b: dict) -> None:
    import torch  # pylint: disable=import-outside-toplevel

    assert sorted(a) == sorted(b)
    for name, x in a.items():
        y = b[name]
        assert (x.dtype, tuple(x.shape)) == (y.dtype, tuple(y.shape)), name
        assert torch.equal(x.view(-1).view(torch.uint8), y.view(-1).view(torch.uint8)), name


# ----------------------------- checkpointed runs (tests/checkpoint)

# Builtin data (its iterator position is part of the checkpoint), tiny model, a checkpoint every step.
CHECKPOINT_RUN = [
    "model_name=test-tiny",
    "vocab_size=4096",
    "dataset_type=builtin",
    "max_target_length=64",
    "learning_rate_schedule_steps=6",
    "checkpoint_period=1",
    "log_period=1",
    "eval_interval=0",
    "eval_steps=1",
    "peak_tflops_per_device=1",
]
CHECKPOINT_IN_PROCESS = [BASE_YML, *CHECKPOINT_RUN, "per_device_batch_size=1"]  # 8 devices


def in_process_cfg(base, run_name, *overrides):
    return load_config(
        [*CHECKPOINT_IN_PROCESS, f"base_output_directory={base}", f"run_name={run_name}", *overrides]
    )


def step_records(run_dir) -> list:
    """Train-step records of metrics.jsonl in file order (a resumed run appends, so steps can repeat).

    A line cut short by a SIGKILL is skipped.
    """
    records = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in record:
                records.append(record)
    return records


def steps_on_disk(run_dir) -> tuple:
    """(finalized steps, names of orbax temporary directories) under the run's checkpoint directory."""
    names = os.listdir(checkpointing.checkpoint_dir(run_dir))
    return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if not n.isdigit())
