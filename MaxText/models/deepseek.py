"""DeepSeek V2 / V3 blocks (decoder_block deepseek2, deepseek3): multi-head latent attention
(MaxText.layers.mla) in every layer; `first_num_dense_layers` dense-MLP layers ("dense_layers"), then MoE
layers with shared experts ("moe_layers"). V2 and V3 differ only in config: V3 routes with sigmoid scores,
a score-correction bias, top-2-sum group scores and normalised top-k weights.

Parameters per layer: pre_self_attention_layer_norm, self_attention/{wq_a, q_norm, wq_b | query, wkv_a,
kv_norm, wkv_b, out}, post_self_attention_layer_norm, and mlp/{wi_0, wi_1, wo} (dense layers) or
mlp/{gate, [score_correction_bias], wi_0, wi_1, wo, shared_experts} (MoE layers).
"""

from MaxText.config.derived import ModelConfig
from MaxText.layers.embeddings import yarn_mscale
from MaxText.layers.mla import MLA
from MaxText.models import hf_configs as hfc
from MaxText.models import hf_mappings
from MaxText.models.moe_layer import MoeDecoderLayer, moe_stacks
from MaxText.models.spec import FamilySpec, HFSpec, Traits
from MaxText.models.transformer_layer import LLAMA_NORMS, DecoderLayer, kernel_plan, numerics, rope_config


def mla_scale(cfg: ModelConfig) -> float:
    """(P + O)^-0.5, times yarn_mscale(factor, mscale_all_dim)^2 under YaRN with mscale_all_dim set."""
    scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    if cfg.rope_type == "yarn" and cfg.rope_yarn_mscale_all_dim:
        scale *= yarn_mscale(cfg.rope_scaling_factor, cfg.rope_yarn_mscale_all_dim) ** 2
    return scale


class _LatentAttention:
    """Mixin: the layer's attention is MLA and its decode cache the compressed latent."""

    def _attention(self):
        # The DecoderLayer this is mixed into has `config`.
        cfg = self.config  # pylint: disable=no-member
        return MLA(
            num_heads=cfg.num_query_heads,
            q_lora_rank=cfg.q_lora_rank,
            kv_lora_rank=cfg.kv_lora_rank,
            qk_nope_head_dim=cfg.qk_nope_head_dim,
            qk_rope_head_dim=cfg.qk_rope_head_dim,
            v_head_dim=cfg.v_head_dim,
            rope=rope_config(cfg, head_dim=cfg.qk_rope_head_dim),
            scale=mla_scale(cfg),
            plan=kernel_plan(cfg),
            block_size=cfg.flash_block_size,
            norm_epsilon=cfg.normalization_layer_epsilon,
            name="self_attention",
            **numerics(cfg),
        )

    @classmethod
    def cache_shapes(cls, cfg: ModelConfig) -> dict:
        return {"latent": (cfg.kv_lora_rank,), "k_rope": (cfg.qk_rope_head_dim,)}


class DeepSeekDenseLayer(_LatentAttention, DecoderLayer):
    """MLA, then a dense gated MLP of mlp_dim."""

    NORM_NAMES = LLAMA_NORMS
    USES_MLA = True


class DeepSeekMoeLayer(_LatentAttention, MoeDecoderLayer):
    """MLA, then routed experts plus shared experts."""

    NORM_NAMES = LLAMA_NORMS
    USES_MLA = True


def stacks(cfg: ModelConfig) -> list:
    return moe_stacks(cfg, DeepSeekDenseLayer, DeepSeekMoeLayer)


def attention_params(cfg: ModelConfig) -> int:
    """Matmul parameters of one MLA layer a token goes through, keys and values expanded as in training.
    Q query rank (0: no low-rank query), R kv rank, P nope and O rope head parts, V value head."""
    d, n, q, r = cfg.emb_dim, cfg.num_query_heads, cfg.q_lora_rank, cfg.kv_lora_rank
    qk, v = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    query = q * (d + n * qk) if q else d * n * qk
    return query + d * (r + cfg.qk_rope_head_dim) + r * n * (cfg.qk_nope_head_dim + v) + n * v * d


def score_value_dims(cfg: ModelConfig) -> int:
    """Query-key plus value head sizes: P + O + V."""
    return cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim


_FIELDS = {
    "num_experts": "n_routed_experts",
    "base_moe_mlp_dim": "moe_intermediate_size",
    "num_shared_experts": "n_shared_experts",
    "first_num_dense_layers": "first_k_dense_replace",
    "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim",
}


def _common_keys(hf: dict, where: str) -> dict:
    keys = hfc.moe_keys(hf, where, _FIELDS)
    freq = hf.get("moe_layer_freq", 1)
    hfc.require(freq == 1, f"{where}: moe_layer_freq={freq} is not supported (expected 1)")
    keys.update(
        q_lora_rank=int(hf.get("q_lora_rank") or 0),
        head_dim=hf["qk_nope_head_dim"] + hf["qk_rope_head_dim"],
        base_num_kv_heads=hf["num_attention_heads"],  # MLA has no separate kv heads
        rope_interleave=bool(hf.get("rope_interleave", True)),  # V2 always rotates adjacent pairs
        routed_scaling_factor=float(hf.get("routed_scaling_factor") or 1.0),
    )
    return keys


def _v2_keys(hf: dict, where: str) -> dict:
    method = hf.get("topk_method", "greedy")
    hfc.require(
        method in ("greedy", "group_limited_greedy"),
        f"{where}: topk_method={method!r} is not supported (greedy, group_limited_greedy)",
    )
    grouped = method == "group_limited_greedy"
    # V2's router never renormalises the top-k weights, whatever norm_topk_prob says.
    return {
        **_common_keys(hf, where),
        "norm_topk_prob": False,
        "moe_n_group": hf["n_group"] if grouped else 1,
        "moe_topk_group": hf["topk_group"] if grouped else 1,
    }


def _v3_keys(hf: dict, where: str) -> dict:
    return {
        **_common_keys(hf, where),
        "moe_n_group": hf.get("n_group") or 1,
        "moe_topk_group": hf.get("topk_group") or 1,
        "norm_topk_prob": bool(hf.get("norm_topk_prob", True)),
    }


def _common_fields(block: str, keys: dict) -> dict:
    window = keys["sliding_window_size"]
    hfc.require(not window, f"sliding_window_size={window}: Hugging Face {block} has no sliding window")
    hfc.require(
        keys["head_dim"] == keys["qk_nope_head_dim"] + keys["qk_rope_head_dim"],
        f"head_dim={keys['head_dim']}: Hugging Face {block} needs qk_nope_head_dim + qk_rope_head_dim",
    )
    hfc.require(
        keys["base_num_kv_heads"] == keys["base_num_query_heads"],
        f"base_num_kv_heads={keys['base_num_kv_heads']}: Hugging Face {block} needs one kv head per query head",
    )
    return {
        **hfc.moe_fields(keys, _FIELDS),
        "q_lora_rank": keys["q_lora_rank"] or None,
        "routed_scaling_factor": float(keys["routed_scaling_factor"]),
        "n_group": keys["moe_n_group"],
        "topk_group": keys["moe_topk_group"],
        "moe_layer_freq": 1,
        "head_dim": keys["qk_rope_head_dim"],  # what transformers sets; it reads qk_*_head_dim
    }


def _v2_fields(keys: dict) -> dict:
    fields = _common_fields("deepseek2", keys)
    hfc.require(keys["rope_interleave"], "rope_interleave=False: Hugging Face deepseek2 always interleaves")
    hfc.require(not keys["norm_topk_prob"], "norm_topk_prob=true: Hugging Face deepseek2 never renormalises")
    return {**fields, "topk_method": "group_limited_greedy" if keys["moe_n_group"] > 1 else "greedy"}


def _v3_fields(keys: dict) -> dict:
    fields = _common_fields("deepseek3", keys)
    return {
        **fields,
        "norm_topk_prob": bool(keys["norm_topk_prob"]),
        "rope_interleave": keys["rope_interleave"],
    }


_NORMS = (LLAMA_NORMS, hf_mappings.HF_NORMS_LLAMA)
_DENSE = (hf_mappings.mla_entries, hf_mappings.gated_mlp_entries, hf_mappings.norm_entries)
_MOE = (hf_mappings.mla_entries, hf_mappings.moe_entries, hf_mappings.norm_entries)
_EXPERTS = ("mlp", ("gate_proj", "up_proj", "down_proj"))


def _spec(name: str, hf: HFSpec) -> FamilySpec:
    return FamilySpec(
        name,
        stacks,
        traits=Traits(moe=True, mla=True),
        hf=hf,
        attention_params=attention_params,
        score_value_dims=score_value_dims,
    )


# V3 routes by sigmoid scores with a correction bias; its checkpoints carry a multi-token-prediction layer
# past num_hidden_layers (model.layers.{L}.*, a training objective only), which conversion skips.
FAMILIES = (
    _spec("deepseek2", HFSpec(
        "deepseek_v2", "DeepseekV2ForCausalLM", "hidden_act", "silu", False, dict(hfc.PLAIN, **hfc.SOFTMAX),
        _v2_keys, _v2_fields, _NORMS, _DENSE, _MOE, _EXPERTS,
    )),
    _spec("deepseek3", HFSpec(
        "deepseek_v3", "DeepseekV3ForCausalLM", "hidden_act", "silu", False,
        dict(hfc.PLAIN, moe_score_func="sigmoid", moe_score_correction_bias=True, moe_group_score="top2_sum"),
        _v3_keys, _v3_fields, _NORMS, _DENSE, _MOE, _EXPERTS, extra_layers=True,
    )),
)  # fmt: skip
