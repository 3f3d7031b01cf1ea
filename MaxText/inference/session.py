"""A loaded model ready to generate text: checkpoint params, tokenizer and the serving engine on a mesh."""

import time

import flax.linen as nn
import jax

from MaxText.config import Config, ConfigError, model_config
from MaxText.checkpoint import adapters as partial
from MaxText.checkpoint.config_overlay import adapter_keys
from MaxText.inference.adapters import AdapterSet
from MaxText.inference.batcher import Batcher, Request
from MaxText.inference.engine import Engine, EngineConfig, SamplingParams, default_buckets
from MaxText.inference.prompt import PromptTokenizer
from MaxText.parallel import mesh as mesh_lib
from MaxText.checkpoint import checkpointing
from MaxText.layers import lora
from MaxText.models.transformer import init_params_boxed, make_model


def sampling_params(cfg: Config, seed_offset: int = 0) -> SamplingParams:
    """The config's decode_sampling_* keys as per-request sampling (greedy = temperature 0; otherwise
    temperature, top_k and nucleus_p all apply). Request i of a batch gets seed decode_sampling_seed + i."""
    seed = (cfg.decode_sampling_seed + seed_offset) % 2**32
    if cfg.decode_sampling_strategy == "topk" and cfg.decode_sampling_top_k < 1:
        raise ConfigError(
            f"decode_sampling_strategy=topk with decode_sampling_top_k={cfg.decode_sampling_top_k}: "
            "expected decode_sampling_top_k >= 1 (0 turns top-k off; use weighted for plain temperature)"
        )
    if cfg.decode_sampling_strategy == "nucleus" and cfg.decode_sampling_nucleus_p >= 1:
        raise ConfigError(
            f"decode_sampling_strategy=nucleus with decode_sampling_nucleus_p={cfg.decode_sampling_nucleus_p}"
            ": expected 0 < decode_sampling_nucleus_p < 1 (1 keeps every token; use weighted)"
        )
    if cfg.decode_sampling_strategy == "greedy":
        return SamplingParams(seed=seed)
    return SamplingParams(
        temperature=cfg.decode_sampling_temperature,
        top_k=cfg.decode_sampling_top_k,
        top_p=cfg.decode_sampling_nucleus_p,
        seed=seed,
    )


def engine_config(cfg: Config) -> EngineConfig:
    """Slots, context length, prefill buckets and cache layout from the config."""
    longest_prompt = max(1, min(cfg.max_prefill_predict_length, cfg.max_target_length - 1))
    return EngineConfig(
        slots=cfg.decode_batch_size,
        max_length=cfg.max_target_length,
        buckets=default_buckets(longest_prompt),
        paged=cfg.kv_cache == "paged",
        page_size=cfg.kv_page_size,
        num_pages=cfg.kv_num_pages,
    )


def abstract_params(cfg: Config, mesh, rules):
    """ShapeDtypeStructs of the model's params with their target shardings (nothing allocated)."""
    model = make_model(model_config(cfg))
    boxed = jax.eval_shape(lambda: init_params_boxed(model, jax.random.key(0)))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    return model, checkpointing.abstract_with_shardings(nn.unbox(boxed), shardings)


def parse_lora_paths(spec: str) -> list:
    """[(name, directory)] of lora_paths="name=dir,name=dir"."""
    pairs = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, directory = part.partition("=")
        if not sep or not name.strip() or not directory.strip():
            raise ConfigError(f"lora_paths={spec!r}: {part!r} is not name=directory")
        pairs.append((name.strip(), directory.strip()))
    names = [n for n, _ in pairs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"lora_paths={spec!r}: the name {duplicate!r} is given twice")
    return pairs


def load_adapter_set(cfg: Config, mesh, rules):
    """The adapters of lora_paths (None when it is empty), each read from its run or step directory."""
    pairs = parse_lora_paths(cfg.lora_paths)
    if not pairs:
        return None
    if cfg.lora_path or cfg.lora_rank > 0:
        raise ConfigError(
            "lora_paths: serves adapters beside a base model; give load_parameters_path the base (not a LoRA "
            "run) and no lora_path"
        )
    keys = [adapter_keys(directory) for _, directory in pairs]
    rank, targets = keys[0]["lora_rank"], sorted(keys[0]["lora_target_modules"])
    for (name, directory), k in zip(pairs, keys):
        if k["lora_rank"] != rank or sorted(k["lora_target_modules"]) != targets:
            raise ConfigError(
                f"lora_paths: adapter {name!r} ({directory}) has lora_rank={k['lora_rank']} on "
                f"{sorted(k['lora_target_modules'])}, {pairs[0][0]!r} has lora_rank={rank} on {targets}; "
                "adapters served together need the same rank and targets"
            )
    _, target = abstract_params(cfg.replace(lora_rank=rank, lora_target_modules=targets), mesh, rules)
    only = jax.tree_util.tree_map_with_path(
        lambda p, _: lora.is_adapter("/".join(str(k.key) for k in p)), target
    )
    wanted = partial.prune(target, only)
    trees = [checkpointing.load_params(directory, wanted) for _, directory in pairs]
    try:
        return AdapterSet(
            names=tuple(n for n, _ in pairs), rank=rank, targets=tuple(targets), trees=tuple(trees),
            scales=tuple(float(k["lora_alpha"]) / rank for k in keys),
        )  # fmt: skip
    except ValueError as e:
        raise ConfigError(f"lora_paths: {e}") from None


class DecodeSession:
    """Holds model, params, tokenizer (a PromptTokenizer: prompts encode by inference/prompt.py's rule),
    engine and batcher. Build with from_checkpoint or from parts."""

    def __init__(
        self, cfg: Config, model, params, tokenizer, mesh, rules, adapters: AdapterSet | None = None
    ):
        if not isinstance(tokenizer, PromptTokenizer):
            tokenizer = PromptTokenizer(tokenizer, cfg.add_bos)
        self.cfg, self.model, self.params, self.tokenizer = cfg, model, params, tokenizer
        self.mesh, self.rules = mesh, rules
        self.adapter_names = adapters.names if adapters is not None else ()  # request adapter k: names[k - 1]
        self.engine = Engine(model, params, engine_config(cfg), adapters)
        self.params = self.engine.params  # the engine's (unscanned) copy; let the scanned one go
        self.batcher = Batcher(self.engine, tokenizer.eos_id, tokenizer.decode)
        self.compile_s = 0.0

    @classmethod
    def from_checkpoint(cls, cfg: Config, path: str) -> "DecodeSession":
        mesh, rules = mesh_lib.make_mesh(cfg), mesh_lib.axis_rules(cfg)
        adapters = load_adapter_set(cfg, mesh, rules)
        model, target = abstract_params(cfg, mesh, rules)
        params = checkpointing.load_params(path, target, ema=cfg.load_ema_params, lora_path=cfg.lora_path)
        return cls(cfg, model, params, PromptTokenizer.from_config(cfg), mesh, rules, adapters)

    def encode_prompt(self, text: str) -> list:
        """The prompt's ids by the one rule (inference/prompt.py), as api.load's tokenizer encodes it."""
        return self.tokenizer.encode(text)

    def max_tokens_for(self, prompt_len: int) -> int:
        return max(1, min(self.cfg.max_decode_steps, self.cfg.max_target_length - prompt_len))

    def warmup(self) -> float:
        """Compiles every prefill bucket and the decode step; returns (and accumulates) the seconds spent."""
        t0 = time.perf_counter()
        with mesh_lib.activate(self.mesh, self.rules):
            self.batcher.warmup()
        self.compile_s += time.perf_counter() - t0
        return self.compile_s

    def generate_text(self, prompts) -> dict:
        """prompts: list of str, all submitted at once to the engine (prompt i samples with seed
        decode_sampling_seed + i). Returns per-prompt "tokens" and "texts" (continuations), mean
        "time_to_first_token_s", "decode_tokens_per_s" after each request's first token, "generated_tokens"
        and "compile_s" (warm-up, excluded from the timings)."""
        requests = []
        config = self.engine.config
        for i, prompt in enumerate(prompts):
            ids = self.encode_prompt(prompt)
            if not ids or len(ids) > max(config.buckets):
                raise ConfigError(
                    f"prompt {i + 1} ({prompt[:30]!r}) is {len(ids)} tokens: expected 1 to {max(config.buckets)}"
                    f" (max_prefill_predict_length={self.cfg.max_prefill_predict_length}, max_target_length="
                    f"{self.cfg.max_target_length} minus one)"
                )
            requests.append(Request(ids, self.max_tokens_for(len(ids)), sampling_params(self.cfg, i)))
        self.warmup()
        t0 = time.perf_counter()
        with mesh_lib.activate(self.mesh, self.rules):
            done = self.batcher.complete(requests)
        elapsed = time.perf_counter() - t0
        tokens = [c.tokens for c in done]
        ttft = [c.first_token_s or 0.0 for c in done]
        generated = sum(len(t) for t in tokens)
        after_first = elapsed - min(ttft)
        return {
            "tokens": tokens,
            "texts": [self.tokenizer.decode(t) for t in tokens],
            "time_to_first_token_s": sum(ttft) / len(ttft),
            "generated_tokens": generated,
            "decode_tokens_per_s": max(generated - len(prompts), 0) / max(after_first, 1e-9),
            "compile_s": self.compile_s,
        }
