"""A loaded model ready to generate text: checkpoint params, tokenizer and a Generator on a mesh."""

import flax.linen as nn
import jax

from MaxText import input_pipeline
from MaxText.config import Config, model_config
from MaxText.inference.generate import DecodeSettings, Generator
from MaxText.inference.sampling import SamplingConfig
from MaxText.parallel import mesh as mesh_lib
from MaxText.training import checkpointing
from MaxText.training.train_state import init_params_boxed, make_model


def sampling_config(cfg: Config) -> SamplingConfig:
    return SamplingConfig(
        strategy=cfg.decode_sampling_strategy,
        temperature=cfg.decode_sampling_temperature,
        top_k=cfg.decode_sampling_top_k,
        top_p=cfg.decode_sampling_nucleus_p,
    )


def decode_settings(cfg: Config, tokenizer) -> DecodeSettings:
    max_new = max(1, min(cfg.max_decode_steps, cfg.max_target_length - cfg.max_prefill_predict_length))
    return DecodeSettings(
        prefill_length=cfg.max_prefill_predict_length,
        max_new=max_new,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        sampling=sampling_config(cfg),
    )


def abstract_params(cfg: Config, mesh, rules):
    """ShapeDtypeStructs of the model's params with their target shardings (nothing allocated)."""
    model = make_model(model_config(cfg))
    boxed = jax.eval_shape(lambda: init_params_boxed(model, jax.random.key(0)))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    return model, checkpointing.abstract_with_shardings(nn.unbox(boxed), shardings)


class DecodeSession:
    """Holds model, params, tokenizer and generator. Build with from_checkpoint or from parts."""

    def __init__(self, cfg: Config, model, params, tokenizer, mesh, rules):
        self.cfg, self.model, self.params, self.tokenizer = cfg, model, params, tokenizer
        self.mesh, self.rules = mesh, rules
        self.generator = Generator(model, params, decode_settings(cfg, tokenizer))

    @classmethod
    def from_checkpoint(cls, cfg: Config, path: str) -> "DecodeSession":
        mesh, rules = mesh_lib.make_mesh(cfg), mesh_lib.axis_rules(cfg)
        model, target = abstract_params(cfg, mesh, rules)
        params = checkpointing.load_params(path, target)
        return cls(cfg, model, params, input_pipeline.load_tokenizer(cfg.tokenizer_path), mesh, rules)

    def encode_prompt(self, text: str) -> list:
        ids = self.tokenizer.encode(text)
        return ([self.tokenizer.bos_id] if self.cfg.add_bos else []) + ids

    def generate_text(self, prompts) -> dict:
        """prompts: list of str. Returns Generator.generate's dict plus "texts" (decoded continuations)."""
        with mesh_lib.activate(self.mesh, self.rules):
            result = self.generator.generate(
                [self.encode_prompt(p) for p in prompts], self.cfg.decode_sampling_seed
            )
        result["texts"] = [self.tokenizer.decode(t) for t in result["tokens"]]
        result["compile_s"] = self.generator.compile_s
        return result
