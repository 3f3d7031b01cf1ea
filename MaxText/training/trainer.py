"""The training loop: build everything from the config, resume if the run exists, train, eval, checkpoint.

Exit codes: 0 done (or stopped by SIGTERM/SIGINT after saving), 2 config error, 3 non-finite loss.
The host never waits on the device except at log, eval and checkpoint steps, and one step behind the
device to catch a NaN loss early; before each save the state itself is checked, so a checkpoint is never
non-finite.
"""

import contextlib
import dataclasses
import functools
import math
import os
import signal
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from MaxText import input_pipeline
from MaxText import kernels
from MaxText.config import Config, ConfigError, model_config, run_dir
from MaxText.config.derived import global_batch_size
from MaxText.layers import moe, remat
from MaxText.models import registry
from MaxText.parallel import distributed, pipeline
from MaxText.parallel import mesh as mesh_lib
from MaxText.checkpoint import adapters, checkpointing, layer_layout
from MaxText.training import aot, flops, opt_wrappers, optimizers, schedules
from MaxText.training.metrics import MetricsWriter, format_duration, step_line
from MaxText.models.transformer import make_model
from MaxText.training.train_state import (
    TrainState,
    abstract_boxed_params,
    init_state,
    param_axes,
    param_count,
    state_shardings,
)
from MaxText.training.train_step import eval_step, train_step

EXIT_NON_FINITE = 3
BATCH_KEYS = ("inputs", "inputs_position", "inputs_segmentation", "targets", "targets_segmentation")


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


class NonFiniteLoss(RuntimeError):
    """Raised when the loss, the gradient norm or (at a save) the train state stops being finite."""


@dataclasses.dataclass
class Setup:  # pylint: disable=too-many-instance-attributes
    """Everything built from the config before the first step."""

    cfg: Config
    mesh: Mesh
    rules: tuple
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: Callable  # step count -> learning rate
    param_axes: dict  # {parameter path: logical axis names}: what the optimizer groups are chosen by
    abstract_state: TrainState
    shardings: TrainState  # the same tree, with a NamedSharding per leaf
    batch_sharding: NamedSharding
    global_batch: int
    flops_per_step: float
    peak_tflops: float
    peak_source: str
    trainable: dict | None = None  # a tree of bools like the params, False where frozen; None: all train

    @property
    def partial_checkpoints(self) -> bool:
        """LoRA runs save their adapters (and optimizer state) alone, pointing at the base they adapt."""
        return self.cfg.lora_rank > 0


def data_config(cfg: Config, global_batch: int) -> input_pipeline.DataConfig:
    user = cfg.dataset_type in ("grain", "hf", "tfds")
    return input_pipeline.DataConfig(
        dataset_type=cfg.dataset_type,
        tokenizer_path=cfg.tokenizer_path if cfg.dataset_type != "synthetic" else "",
        max_target_length=cfg.max_target_length,
        global_batch_size=global_batch,
        vocab_size=cfg.vocab_size,
        data_shuffle_seed=cfg.data_shuffle_seed,
        eval_fraction=cfg.eval_split_fraction,
        add_bos=cfg.add_bos,
        add_eos=cfg.add_eos,
        packing=cfg.packing,
        dataset_path=cfg.dataset_path if cfg.dataset_type == "tfds" else "",
        packing_type=cfg.packing_type,
        data_files=cfg.grain_train_files if cfg.dataset_type == "grain" else cfg.hf_data_files,
        eval_files=cfg.grain_eval_files if cfg.dataset_type == "grain" else cfg.hf_eval_files,
        column=cfg.train_data_columns,
        tokenize=cfg.tokenize_train_data or not user,
        worker_count=cfg.grain_worker_count,
        hf_path=cfg.hf_path,
        hf_streaming=cfg.hf_streaming,
        dataset_name=cfg.dataset_name,
        train_split=cfg.train_split,
        eval_split=cfg.eval_split,
        use_sft=cfg.use_sft,
        sft_completion_only=cfg.sft_train_on_completion_only,
        sft_overlong=cfg.sft_overlong,
        chat_template=cfg.chat_template,
    )


def build(cfg: Config, devices=None) -> Setup:
    """Mesh, model, optimizer and shardings. Allocates nothing on the devices yet."""
    mesh = mesh_lib.make_mesh(cfg, devices)
    rules = mesh_lib.axis_rules(cfg, mesh)
    n_devices = mesh.devices.size
    global_batch = global_batch_size(cfg, n_devices)
    dp = mesh_lib.data_parallel_size(mesh, rules)
    if global_batch < 1 or abs(cfg.per_device_batch_size * n_devices - global_batch) > 1e-6:
        raise ConfigError(
            f"per_device_batch_size={cfg.per_device_batch_size}: times {n_devices} devices must be a "
            "whole number of rows"
        )
    micro = global_batch // cfg.gradient_accumulation_steps
    if global_batch % cfg.gradient_accumulation_steps or micro % dp:
        raise ConfigError(
            f"gradient_accumulation_steps={cfg.gradient_accumulation_steps}: the global batch of {global_batch} "
            f"rows must split into that many microbatches, each divisible by the {dp} data shards"
        )
    mcfg = model_config(cfg)
    if remat.offloads(cfg.remat_policy, mcfg.remat_custom) and not remat.host_offload_supported(
        mesh.devices.flat
    ):
        raise ConfigError(
            f"remat_policy={cfg.remat_policy}: offloads activations to pinned host memory, which the "
            f"{mesh.devices.flat[0].device_kind} devices do not offer; choose a policy without offloading"
        )
    stages = mesh.shape["stage"]
    pipeline.check(
        mcfg, {st.name: st.length for st in registry.stacks(mcfg)}, stages,
        micro, dp, pipeline.num_microbatches(cfg.num_pipeline_microbatches, stages),
    )  # fmt: skip
    moe.check_expert_parallelism(mcfg.num_experts, mesh.shape["expert"])
    # The target is the platform of the devices the step compiles for (train_compile: the target's), so the
    # kernel plan describes the program that runs there, not this host.
    model = make_model(mcfg, kernels.platform_of(list(mesh.devices.flat)))
    boxed_params = abstract_boxed_params(model)
    axes = param_axes(boxed_params)
    _check_lora(cfg)
    tx = optimizers.make_optimizer(cfg, axes)
    abstract_state, shardings = state_shardings(boxed_params, tx, mesh, rules)
    mask = optimizers.trainable_mask(cfg, axes)
    trainable = (
        None
        if all(mask.values())
        else jax.tree_util.tree_map_with_path(
            lambda path, _: mask[optimizers.path_name(path)], abstract_state.params
        )
    )
    mesh_lib.check_params_sharded(abstract_state.params, shardings.params, mesh, cfg.sharding_tolerance)
    peak, source = flops.peak_tflops_per_device(cfg.peak_tflops_per_device, mesh.devices.flat[0].device_kind)
    return Setup(
        cfg=cfg,
        mesh=mesh,
        rules=rules,
        model=model,
        tx=tx,
        schedule=schedules.learning_rate_schedule(cfg),
        param_axes=axes,
        abstract_state=abstract_state,
        shardings=shardings,
        batch_sharding=mesh_lib.logical_sharding(mesh, rules, ("activation_batch", "activation_length")),
        global_batch=global_batch,
        flops_per_step=flops.train_flops_per_step(
            mcfg, global_batch, cfg.max_target_length, _adapter_params(abstract_state.params)
        ),
        peak_tflops=peak,
        peak_source=source,
        trainable=trainable,
    )


def _adapter_params(params) -> int:
    """Parameters of the LoRA adapters a token goes through (not the routed experts'; training/flops.py)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return sum(
        x.size for p, x in leaves if optimizers.path_name(p).rsplit("/", 1)[-1] in ("lora_a", "lora_b")
    )


def _check_lora(cfg: Config) -> None:
    if cfg.lora_rank <= 0:
        return
    if not cfg.load_parameters_path:
        raise ConfigError(
            f"lora_rank={cfg.lora_rank}: adapters train on a base model; set load_parameters_path to its checkpoint"
        )
    if cfg.ema_decay > 0:
        raise ConfigError(
            f"ema_decay={cfg.ema_decay}: an EMA of the weights is not kept for LoRA runs (lora_rank > 0); set ema_decay=0"
        )


def jit_train_step(s: Setup):
    """The jitted train step: (state, batch) -> (state, metrics), state donated. train and train_compile
    both build it here, so an ahead-of-time compile is of exactly the step that trains."""
    cfg = s.cfg
    step_fn = functools.partial(
        train_step, s.model, s.tx, s.schedule, cfg.z_loss_multiplier, cfg.gradient_accumulation_steps,
        cfg.init_weights_seed, lb_weight=cfg.load_balance_loss_weight, spike_stats=cfg.skip_step_on_spikes,
        trainable=s.trainable,
    )  # fmt: skip
    return jax.jit(
        step_fn,
        in_shardings=(s.shardings, s.batch_sharding),
        out_shardings=(s.shardings, None),
        donate_argnums=(0,),
    )


def abstract_step_args(s: Setup) -> tuple:
    """(state, batch) as ShapeDtypeStructs with their shardings: what the train step is lowered for."""
    state = checkpointing.abstract_with_shardings(s.abstract_state, s.shardings)
    shape = (s.global_batch, s.cfg.max_target_length)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=s.batch_sharding) for k in BATCH_KEYS}
    return state, batch


def compile_steps(s: Setup):
    """The train and eval steps (jitted, compiled lazily on first call, once). With compiled_trainstep_file
    the train step is the executable train_compile saved, after checking it was built for this run."""
    if s.cfg.compiled_trainstep_file:
        p_train = aot.load_executable(s.cfg.compiled_trainstep_file, s.cfg, list(s.mesh.devices.flat))
        log(f"train step loaded from compiled_trainstep_file={s.cfg.compiled_trainstep_file}")
    else:
        p_train = jit_train_step(s)
    p_eval = jax.jit(
        functools.partial(eval_step, s.model), in_shardings=(s.shardings.params, s.batch_sharding)
    )
    return p_train, p_eval


def to_device(s: Setup, batch: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(s.batch_sharding, batch[k]) for k in BATCH_KEYS}


class _StopFlag:
    """Turns the first SIGTERM/SIGINT into a request to save and exit; a second one acts as usual."""

    def __init__(self):
        self.requested = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        self.requested = signal.Signals(signum).name
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_finite(step: int, metrics: dict) -> None:
    loss, gnorm = float(metrics["loss"]), float(metrics["grad_norm"])
    if not (math.isfinite(loss) and math.isfinite(gnorm)):
        raise NonFiniteLoss(
            f"non-finite loss or gradient norm at step {step}: loss={loss}, grad_norm={gnorm}"
        )


@jax.jit
def _all_finite(tree) -> jax.Array:
    """True when every float leaf of `tree` is finite (one fused reduction; run at save time only)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


class _Evaluator:
    """Fixed eval batches; reports mean loss and bits per UTF-8 byte of the text the targets decode to."""

    def __init__(self, s: Setup, dcfg, tokenizer):
        self.s = s
        host = input_pipeline.make_eval_batches(
            dcfg, s.cfg.eval_steps, jax.process_index(), jax.process_count()
        )
        self.batches = [to_device(s, b) for b in host]
        self.num_bytes = None
        if tokenizer is not None:
            # Bytes of the whole global eval set: each host counts its rows (it reads only those), summed.
            lengths = tokenizer.token_byte_lengths()
            local = sum(float((lengths[b["targets"]] * (b["targets_segmentation"] != 0)).sum()) for b in host)
            self.num_bytes = sum(checkpointing.gather_from_processes(local))

    def __call__(self, p_eval, params) -> dict:
        sums = [p_eval(params, b) for b in self.batches]
        ce = float(sum(x["ce"] for x in sums))
        tokens = float(sum(x["tokens"] for x in sums))
        out = {"eval_loss": ce / max(tokens, 1.0)}
        if self.num_bytes:
            out["eval_bits_per_byte"] = ce / math.log(2) / self.num_bytes
        return out


class _Profiler:
    """Traces steps [skip, skip + n) into the run's TensorBoard directory when profiler=xplane.

    A run that ends inside the window (last step, SIGTERM, non-finite loss) still writes what it traced.
    """

    def __init__(self, cfg: Config, logdir: str, quiesce=None):
        self.cfg, self.logdir, self.active, self.first = cfg, logdir, False, 0
        # Waits for checkpoint writes in flight: starting or stopping a trace while orbax's writer threads
        # run has crashed the process (a segfault in CI, as jax-ml/jax#40260 and marin#5509 report on GPU).
        self.quiesce = quiesce or (lambda: None)

    def before_step(self, step: int) -> None:
        if self.cfg.profiler == "xplane" and step == self.cfg.skip_first_n_steps_for_profiler:
            self.quiesce()
            jax.profiler.start_trace(self.logdir)
            self.active, self.first = True, step

    def after_step(self, step: int, state) -> None:
        if self.active and step >= self.cfg.skip_first_n_steps_for_profiler + self.cfg.profiler_steps:
            self.stop(step, state)

    def stop(self, step: int, state) -> None:
        if not self.active:
            return
        jax.block_until_ready(state)
        self.quiesce()
        jax.profiler.stop_trace()
        self.active = False
        log(f"profile of {step - self.first} steps written under {self.logdir}")


def _optimizer_changes(s: Setup, meta: dict) -> list:
    """The settings that shape the optimizer state and differ from the checkpoint's: [(key, then, now)]."""
    then = optimizers.state_signature(meta.get("config", {}))
    now = optimizers.state_signature(checkpointing.config_dict(s.cfg))
    return [(key, then[key], value) for key, value in now.items() if then[key] != value]


def _restore_step(s: Setup, ckpt, target, step: int) -> tuple:
    """(state, data iterator state, meta) of checkpoint `step`; CorruptCheckpoint when it is damaged."""
    step_dir = os.path.join(ckpt.directory, str(step))
    changes = _optimizer_changes(s, checkpointing.read_step_meta(step_dir))
    if changes and not s.cfg.reset_optimizer_state:
        key, then, now = changes[0]
        raise ConfigError(
            f"{key}: step {step} of run {s.cfg.run_name!r} was trained with {then!r}, this config has {now!r}, "
            "so its optimizer state does not fit; set reset_optimizer_state=true to keep its parameters and "
            "step with a fresh optimizer state"
        )
    if changes:  # reset_optimizer_state=true: the parameters, step and data position, a fresh optimizer
        params, data_state, meta = checkpointing.restore_params_only(step_dir, target.params)
        opt_state = jax.jit(s.tx.init, out_shardings=s.shardings.opt_state)(params)
        step_array = jax.device_put(jnp.asarray(step, jnp.int32), s.shardings.step)
        log(
            f"reset_optimizer_state=true: step {step}'s parameters with a fresh {s.cfg.opt_type} optimizer state"
        )
        return TrainState(step=step_array, params=params, opt_state=opt_state), data_state, meta
    # A run resumed with the other scan_layers setting: restore in the stored layout, then restack the
    # params and the optimizer state that mirrors them (bit-exact); later saves use the new layout.
    held = target  # a LoRA run's steps hold the adapters alone; the base comes from where meta says
    if s.partial_checkpoints:
        held = target.replace(params=adapters.prune(target.params, s.trainable))
    restacks = checkpointing.layout_plan(step_dir, held.params)
    source = layer_layout.stored_state_abstract(held, restacks) if restacks else held
    state, data_state, meta = ckpt.restore(step, source)
    if restacks:
        state = layer_layout.state_to_target(state, restacks, held)
        log(
            f"converted step {step} from scan_layers={not s.cfg.scan_layers} to scan_layers={s.cfg.scan_layers}"
        )
    if s.partial_checkpoints:
        base = meta[adapters.BASE_KEY]
        frozen = adapters.prune(target.params, adapters.invert(s.trainable))
        rest = checkpointing.load_params(base["path"], frozen, ema=base["ema"])
        state = state.replace(params=adapters.merge(state.params, rest))
    return state, data_state, meta


def _restore_or_init(s: Setup, ckpt, data_iter, tokenizer_id):
    """Resumes the newest readable checkpoint of this run, else starts fresh (optionally from
    load_parameters_path). Damaged newer steps are skipped with a warning; if every step is damaged,
    ConfigError (never a silent fresh start)."""
    cfg = s.cfg
    target = checkpointing.abstract_with_shardings(s.abstract_state, s.shardings)
    found = ckpt.restore_newest(functools.partial(_restore_step, s, ckpt, target), log) if ckpt else None
    if found is not None:
        latest, (state, data_state, meta) = found
        if meta.get("format_version") != checkpointing.FORMAT_VERSION:
            raise ConfigError(
                f"checkpoint {ckpt.directory}/{latest}: unsupported format {meta.get('format_version')}"
            )
        if (
            tokenizer_id
            and meta.get("tokenizer")
            and meta["tokenizer"].get("sha256") != tokenizer_id.get("sha256")
        ):
            raise ConfigError(
                f"tokenizer_path={cfg.tokenizer_path!r}: differs from the tokenizer this run was trained with"
            )
        try:
            data_iter.set_state(data_state)
        except ValueError as e:  # the data settings changed since the checkpoint was written
            raise ConfigError(f"run {cfg.run_name!r} cannot resume from step {latest}: {e}") from e
        log(f"resumed run {cfg.run_name!r} from step {latest} ({ckpt.directory})")
        return state
    state = init_state(s.model, s.tx, cfg.init_weights_seed, s.shardings)
    if cfg.load_parameters_path:
        wanted = target.params  # LoRA: the base's weights; the adapters start fresh (B = 0)
        if s.partial_checkpoints:
            wanted = adapters.prune(target.params, adapters.invert(s.trainable))
        params = checkpointing.load_params(cfg.load_parameters_path, wanted, ema=cfg.load_ema_params)
        if s.partial_checkpoints:
            params = adapters.merge(adapters.prune(state.params, s.trainable), params)
        state = state.replace(params=params)
        log(f"loaded parameters from {cfg.load_parameters_path}")
    return state


def _step_record(s: Setup, step: int, metrics: dict, seconds_per_step: float, total_tokens: float) -> dict:
    tflops = s.flops_per_step / seconds_per_step / s.mesh.devices.size / 1e12
    return {
        "step": step,
        "loss": float(metrics["loss"]),
        "lr": float(metrics["lr"]),
        "grad_norm": float(metrics["grad_norm"]),
        "step_time_s": seconds_per_step,
        "tokens_per_s": total_tokens / seconds_per_step,
        "tflops_per_device": tflops,
        "mfu": tflops / s.peak_tflops,
        **({"moe_lb_loss": float(metrics["moe_lb_loss"])} if "moe_lb_loss" in metrics else {}),
        **({"z_loss": float(metrics["z_loss"])} if s.cfg.z_loss_multiplier > 0 else {}),
        **({"skipped_steps": int(metrics["skipped_steps"])} if "skipped_steps" in metrics else {}),
        **({"trained_tokens": int(metrics["tokens"])} if s.cfg.use_sft else {}),  # the masked target count
    }


class _Run:  # pylint: disable=too-many-instance-attributes
    """One training run's loop state. Each concern (log, eval, checkpoint) is a method called per step."""

    def __init__(self, s: Setup, state, data_iter, ckpt, writer, evaluator, meta):
        self.s, self.cfg = s, s.cfg
        self.state, self.data_iter, self.ckpt = state, data_iter, ckpt
        self.writer, self.evaluator, self.meta = writer, evaluator, meta
        self.p_train, self.p_eval = compile_steps(s)
        self.step = int(state.step)
        self.saved_step = self.step
        self.target_reached = False  # an eval loss reached target_eval_loss
        self.pending = None  # (step, device metrics) of the newest step, checked one step later
        self.mark = None  # (time, step) from which step time is measured; reset after eval and saves
        self.t_start = time.perf_counter()

    def train_one(self) -> None:
        """Dispatches one step and checks the previous step's loss (one step behind the device)."""
        self.state, metrics = self.p_train(self.state, to_device(self.s, next(self.data_iter)))
        self.step += 1
        if self.pending is not None:
            _check_finite(*self.pending)  # the previous step: done by now, so this rarely waits
        self.pending = (self.step, metrics)
        if self.mark is None:  # the first step compiles; measure from its end
            _check_finite(*self.pending)
            self.mark = (time.perf_counter(), self.step)
            log(f"first step done in {self.mark[0] - self.t_start:.1f}s (includes compilation)")

    def maybe_log(self, last: bool) -> None:
        """Writes the step record every log_period steps; step time excludes eval and checkpoint time."""
        if not (self.step % self.cfg.log_period == 0 or last):
            return
        _check_finite(*self.pending)
        now = time.perf_counter()
        mark_time, mark_step = self.mark
        per_step = (
            (now - mark_time) / (self.step - mark_step) if self.step > mark_step else now - self.t_start
        )
        record = _step_record(
            self.s, self.step, self.pending[1], per_step, self.s.global_batch * self.cfg.max_target_length
        )
        self.writer.write(record)
        log(step_line(record, self.cfg.steps, per_step * (self.cfg.steps - self.step)))
        self.mark = (time.perf_counter(), self.step)

    def maybe_eval(self, last: bool) -> None:
        """Logs eval loss (and bits per byte) every eval_interval steps and at the last step."""
        if not ((self.cfg.eval_interval and self.step % self.cfg.eval_interval == 0) or last):
            return
        result = {"step": self.step, **self.evaluator(self.p_eval, opt_wrappers.eval_params(self.state))}
        self.target_reached = (
            0 < self.cfg.target_eval_loss and result["eval_loss"] <= self.cfg.target_eval_loss
        )
        self.writer.write(result)
        log(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
        self.mark = (time.perf_counter(), self.step)

    def save(self) -> None:
        """Saves the current step (never a non-finite one)."""
        if self.ckpt is None or self.saved_step == self.step:
            return
        _check_finite(*self.pending)
        # A finite loss does not make the new state finite (an inf learning rate or an overflowing update
        # shows only in the next step's loss): check the state itself before it can become a checkpoint.
        if not bool(_all_finite(self.state)):
            raise NonFiniteLoss(f"non-finite parameters or optimizer state after step {self.step}")
        data_state = input_pipeline.merge_states(
            checkpointing.gather_from_processes(self.data_iter.get_state())
        )
        state = self.state
        if self.s.partial_checkpoints:
            state = state.replace(params=adapters.prune(state.params, self.s.trainable))
        self.ckpt.save(self.step, state, data_state, self.meta)
        self.saved_step = self.step
        self.mark = (time.perf_counter(), self.step)

    def maybe_save(self, last: bool) -> None:
        """Saves every checkpoint_period steps and at the last step."""
        if self.step % self.cfg.checkpoint_period == 0 or last:
            self.save()


def _open_data(cfg: Config, dcfg):
    """(tokenizer or None, train iterator). Data settings that cannot work are config errors (exit 2)."""
    with _data_errors(cfg):
        if cfg.dataset_type != "synthetic" and not os.path.isfile(cfg.tokenizer_path):
            raise ConfigError(f"tokenizer_path={cfg.tokenizer_path!r}: no such file")
        tokenizer = (
            input_pipeline.load_tokenizer(cfg.tokenizer_path) if cfg.dataset_type != "synthetic" else None
        )
        return tokenizer, input_pipeline.make_train_iterator(dcfg, jax.process_index(), jax.process_count())


@contextlib.contextmanager
def _data_errors(cfg: Config):
    """The pipeline's ValueErrors name the setting or file (vocab_size, a glob, a column): exit 2 with them."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"dataset_type={cfg.dataset_type!r}: {e}") from None


def _log_start(s: Setup, state) -> None:
    """The start-up lines: the model, mesh and batch; the optimizer groups; what trains."""
    cfg = s.cfg
    log(
        f"model: {param_count(state.params):,} params | devices: {s.mesh.devices.size} "
        f"({jax.devices()[0].device_kind}) mesh {dict(s.mesh.shape)} | global batch {s.global_batch} x "
        f"{cfg.max_target_length} tokens | {s.flops_per_step / 1e12:.3f} TFLOP/step | "
        f"peak {s.peak_tflops:.3f} TFLOP/s/dev ({s.peak_source})"
    )
    if cfg.opt_type != "adamw" or cfg.optimizer_groups or cfg.lora_rank > 0:
        for line in optimizers.describe(cfg, s.abstract_state.params, s.param_axes):
            log(line)
    if s.trainable is not None:
        log(optimizers.trainable_line(cfg, s.abstract_state, s.param_axes))


def train(cfg: Config, devices=None) -> int:
    """Runs (or resumes) training as configured, on `devices` (default: all). Returns the exit code."""
    s = build(cfg, devices)
    directory = run_dir(cfg)
    dcfg = data_config(cfg, s.global_batch)
    tokenizer, data_iter = _open_data(cfg, dcfg)
    if cfg.use_sft:
        log(input_pipeline.sft_summary_line(getattr(data_iter, "stats", None)))
    tokenizer_id = tokenizer.identity() if tokenizer else None
    ckpt = None
    if cfg.enable_checkpointing:
        ckpt = checkpointing.Checkpointer(
            checkpointing.checkpoint_dir(directory), cfg.max_num_checkpoints_to_keep, cfg.async_checkpointing
        )
    writer = MetricsWriter(directory)
    profiler = _Profiler(cfg, f"{directory}/tensorboard", ckpt.wait if ckpt else None)
    stop = _StopFlag()
    meta = {"config": checkpointing.config_dict(cfg), "tokenizer": tokenizer_id}
    if s.partial_checkpoints:
        base_dir = checkpointing.resolve_step_dir(cfg.load_parameters_path)
        meta[adapters.BASE_KEY] = adapters.base_record(base_dir, cfg.load_ema_params)
    try:
        with mesh_lib.activate(s.mesh, s.rules):
            state = _restore_or_init(s, ckpt, data_iter, tokenizer_id)
            _log_start(s, state)
            if int(state.step) >= cfg.steps:
                log(
                    f"run {cfg.run_name!r} already trained to step {int(state.step)} (steps={cfg.steps}); nothing to do"
                )
                return 0
            with _data_errors(cfg):
                evaluator = _Evaluator(s, dcfg, tokenizer)
            run = _Run(s, state, data_iter, ckpt, writer, evaluator, meta)
            # Every process must leave the loop at the same step, or the final save's collectives hang. The
            # eval loss behind target_reached is a global value, so all processes see it alike.
            agreement = distributed.StopAgreement(s.mesh)
            stopping = False
            while (
                run.step < cfg.steps
                and not run.target_reached
                and not (stopping := agreement.should_stop(bool(stop.requested)))
            ):
                profiler.before_step(run.step)
                run.train_one()
                profiler.after_step(run.step, run.state)
                last = run.step == cfg.steps
                run.maybe_log(last)
                run.maybe_eval(last)
                run.maybe_save(last)
            profiler.stop(run.step, run.state)
            if stopping:
                cause = stop.requested or "a stop request from another process"
                log(f"received {cause} at step {run.step}: saving a checkpoint and exiting")
                run.save()
            if run.target_reached:
                log(f"eval loss reached target_eval_loss={cfg.target_eval_loss} at step {run.step}; stopping")
                run.save()
            log(f"trained to step {run.step} in {format_duration(time.perf_counter() - run.t_start)}")
            return 0
    except NonFiniteLoss as e:
        if ckpt:
            ckpt.wait()  # a save still in flight is of a finite state: let it land before naming the last one
        last_good = ckpt.latest_step() if ckpt else None
        where = f"step {last_good} in {ckpt.directory}" if last_good is not None else "none"
        log(f"error: {e}. Stopping; the last good checkpoint is {where}")
        return EXIT_NON_FINITE
    finally:
        stop.restore()
        if profiler.active:  # stopped early by an error: still write the trace
            profiler.quiesce()
            jax.profiler.stop_trace()
        if ckpt:
            ckpt.close()
        writer.close()
