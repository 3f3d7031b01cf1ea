"""Python API: load a model from any checkpoint directory, get logits, generate, tokenize.

  from MaxText import api
  model = api.load("path")      # a run directory, a converted checkpoint directory or a Hugging Face directory
  model.logits(ids)             # int [B, T] -> np.float32 [B, T, V]
  model.generate(ids, 20)       # int [B, P] -> int [B, P + 20], prompt included (as Hugging Face returns)
  model.tokenizer.encode("text") / model.tokenizer.decode(ids)   # prompts encode as decode and serve do

Generation runs on the serving Engine (MaxText/inference/engine.py), the one that MaxText.decode and
MaxText.serve use, with its sampler; `model.tokenizer` is inference/prompt.py's PromptTokenizer, the same
prompt rule (BOS as the config's add_bos says, no EOS) as theirs.

A Hugging Face directory is converted on the fly into a temporary checkpoint directory (removed when the
model is garbage-collected). Keyword arguments to `load` are config overrides (key=value, as on the command
line), e.g. `api.load(path, dtype="bfloat16")`. Matmuls run at precision "highest" unless `matmul_precision`
is given.
"""

import collections
import json
import math
import os
import shutil
import tempfile
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from MaxText import paths
from MaxText.config import Config, load_config
from MaxText.checkpoint.config_overlay import adapter_keys, saved_model_keys
from MaxText.inference.batcher import Batcher, Request
from MaxText.inference.engine import DECODE_LAYOUT, Engine, EngineConfig, SamplingParams
from MaxText.inference.prompt import PromptTokenizer
from MaxText.inference.session import abstract_params
from MaxText.parallel import mesh as mesh_lib
from MaxText.checkpoint import checkpointing

__all__ = ["Model", "PromptTokenizer", "is_hf_dir", "load"]

BASE_YML = os.path.join(paths.REPO_ROOT, "configs", "base.yml")
# Inference defaults that differ from base.yml's training defaults; explicit overrides win.
_API_DEFAULTS = {"matmul_precision": "highest", "dropout_rate": 0.0}
_MAX_ENGINES = 8  # engines kept per model (one per generate shape); each holds compiled programs only


def is_hf_dir(path: str) -> bool:
    """A Hugging Face model directory: config.json and safetensors weights."""
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        f.endswith(".safetensors") for f in os.listdir(path)
    )


def _cli_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _devices_for(cfg: Config, devices) -> list:
    """The first n devices, n the largest count that divides both the device count and the FSDP-sharded
    model dimension (so any model size loads on any number of devices)."""
    devices = list(devices if devices is not None else jax.devices())
    n = math.gcd(len(devices), cfg.base_emb_dim)
    return devices[:n]


def _source_token_ids(meta: dict) -> dict:
    hf = (meta.get("source") or {}).get("hf_config") or {}
    out = {}
    for kind in ("eos", "pad"):
        value = hf.get(f"{kind}_token_id")
        out[kind] = value[0] if isinstance(value, list) and value else value
    return out


class Model:
    """A loaded model: parameters on a mesh, its config, tokenizer and compiled forward/generate functions.

    The layers run unrolled (engine.DECODE_LAYOUT: the layout the Engine decodes with, whose
    scanned decode step ran ~2x slower on CPU), whatever layout the checkpoint holds; it loads straight into
    that layout (a bit-exact reshuffle), so `params` is the only copy and logits() and generate() share it.
    The unrolled forward pass equals the scanned one up to XLA's float rounding (bitwise for the Llama and
    Gemma 2 test models on CPU; Qwen 3's within 2e-7)."""

    def __init__(self, cfg: Config, path: str, devices=None, add_bos=None, add_eos=None, temp_dir=None):
        cfg = cfg.replace(**DECODE_LAYOUT)
        self.cfg, self.path = cfg, path
        # A temporary conversion of a Hugging Face directory lives as long as the model.
        self._cleanup = weakref.finalize(self, shutil.rmtree, temp_dir, True) if temp_dir else None
        self.mesh = mesh_lib.make_mesh(cfg, _devices_for(cfg, devices))
        self.rules = mesh_lib.axis_rules(cfg)
        self.module, target = abstract_params(cfg, self.mesh, self.rules)
        self.params = checkpointing.load_params(
            path, target, ema=cfg.load_ema_params, lora_path=cfg.lora_path
        )
        self.tokenizer = None
        if cfg.tokenizer_path and os.path.isfile(cfg.tokenizer_path):
            self.tokenizer = PromptTokenizer.from_config(cfg, add_bos, add_eos)
        source = _source_token_ids(checkpointing.read_meta(path))
        tok_eos = self.tokenizer.eos_id if self.tokenizer else -1
        tok_pad = self.tokenizer.pad_id if self.tokenizer else -1
        self.eos_id = source["eos"] if source["eos"] is not None else tok_eos
        pad = source["pad"] if source["pad"] is not None else tok_pad
        self.pad_id = pad if pad is not None and pad >= 0 else max(self.eos_id, 0)
        self._forward = jax.jit(self._apply)
        self._engines = collections.OrderedDict()  # (B, P, max_new) -> Engine, least recently used first

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def _apply(self, params, ids):
        b, t = ids.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        logits, _ = self.module.apply({"params": params}, ids, positions, jnp.ones_like(ids), "train")
        return logits.astype(jnp.float32)

    def _check_ids(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"token ids: expected a non-empty int array [B, T], got {ids.dtype}{list(ids.shape)}"
            )
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got [{ids.min()}, {ids.max()}]")
        return ids.astype(np.int32)

    def logits(self, token_ids) -> np.ndarray:
        """token_ids int [B, T] -> float32 logits [B, T, V] (causal forward pass, no cache)."""
        ids = self._check_ids(token_ids)
        with mesh_lib.activate(self.mesh, self.rules):
            return np.asarray(self._forward(self.params, jnp.asarray(ids)), dtype=np.float32)

    def _engine(self, batch: int, prompt_len: int, max_new: int) -> Engine:
        """The Engine for one generate shape: `batch` slots, one prefill bucket of prompt_len, a contiguous
        cache of prompt_len + max_new. It shares this model's params (already unrolled: no copy made)."""
        key = (batch, prompt_len, max_new)
        if key in self._engines:
            self._engines.move_to_end(key)
        else:
            config = EngineConfig(slots=batch, max_length=prompt_len + max_new, buckets=(prompt_len,))
            self._engines[key] = Engine(self.module, self.params, config)
            while len(self._engines) > _MAX_ENGINES:
                self._engines.popitem(last=False)
        return self._engines[key]

    def generate(
        self,
        prompt_ids,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        eos_id: int | None = None,
    ) -> np.ndarray:
        """prompt_ids int [B, P] -> int32 [B, P + max_new_tokens], the prompt included.

        Greedy when temperature == 0, else sampling at that temperature with top_k (0 = off) and top_p.
        A row that emits EOS (eos_id, default the model's; -1 never stops) is filled with the pad id after it.
        Each row is one request of the serving Engine (as MaxText.decode and the server run them): row b
        samples with seed + b (mod 2**32) folded with its own step count, so a row's tokens do not depend
        on the other rows, and the same call gives the same tokens.
        """
        ids = self._check_ids(prompt_ids)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
        if temperature < 0:
            raise ValueError(f"temperature={temperature}: expected >= 0")
        eos = self.eos_id if eos_id is None else eos_id
        b, p = ids.shape
        requests = [
            Request(
                row.tolist(), max_new_tokens, SamplingParams(temperature, top_k, top_p, (seed + i) % 2**32)
            )
            for i, row in enumerate(ids)
        ]
        with mesh_lib.activate(self.mesh, self.rules):
            done = Batcher(self._engine(b, p, max_new_tokens), eos).complete(requests)
        out = np.full((b, p + max_new_tokens), self.pad_id, np.int32)
        out[:, :p] = ids
        for i, completion in enumerate(done):
            row = completion.tokens + ([eos] if completion.finish_reason == "stop" else [])
            out[i, p : p + len(row)] = row
        return out


def _config(path: str, overrides: dict) -> Config:
    values = {**_API_DEFAULTS, **overrides}
    argv = [BASE_YML] + [f"{k}={_cli_value(v)}" for k, v in values.items()]
    cfg = load_config(argv, overlay=dict(saved_model_keys(path), **adapter_keys(values.get("lora_path", ""))))
    if "tokenizer_path" not in overrides and cfg.tokenizer_path:
        # A converted directory carries its tokenizer: use that copy, so a moved or copied directory works.
        beside = os.path.join(checkpointing.resolve_step_dir(path), os.path.basename(cfg.tokenizer_path))
        if os.path.isfile(beside):
            cfg = cfg.replace(tokenizer_path=beside)
    return cfg


def load(
    path: str, devices=None, add_bos: bool | None = None, add_eos: bool | None = None, **overrides
) -> Model:
    """Loads a run directory (latest checkpoint), a converted checkpoint directory or a Hugging Face directory.

    devices: the devices to shard over (default: as many of jax.devices() as the model divides over).
    add_bos/add_eos: override the prompt rule (inference/prompt.py: BOS as the checkpoint's add_bos says,
      no EOS) for `model.tokenizer.encode`.
    overrides: config keys, e.g. dtype="bfloat16" or matmul_precision="default".
    """
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory")
    temp = None
    if is_hf_dir(path):
        from MaxText.conversion import hf_to_maxtext  # pylint: disable=import-outside-toplevel

        temp = tempfile.mkdtemp(prefix="maxtext_hf_")
        ckpt = os.path.join(temp, "checkpoint")
        hf_to_maxtext.convert(path, ckpt, log=lambda _: None)
        path = ckpt
    try:
        return Model(_config(path, overrides), path, devices, add_bos, add_eos, temp_dir=temp)
    except BaseException:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
        raise
