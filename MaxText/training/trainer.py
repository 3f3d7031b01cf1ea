"""The training loop: build everything from the config, resume if the run exists, train, eval, checkpoint.

Exit codes: 0 done (or stopped by SIGTERM/SIGINT after saving), 2 config error, 3 non-finite loss.
The host never waits on the device except at log, eval and checkpoint steps, and one step behind the
device to catch a NaN before it can reach a checkpoint.
"""

import dataclasses
import functools
import math
import signal
import time

import flax.linen as nn
import jax
from jax.sharding import Mesh

from MaxText import input_pipeline
from MaxText.config import Config, ConfigError, model_config, run_dir
from MaxText.config.derived import global_batch_size
from MaxText.parallel import mesh as mesh_lib
from MaxText.training import checkpointing, flops, optimizers
from MaxText.training.metrics import MetricsWriter, format_duration, step_line
from MaxText.training.train_state import TrainState, init_state, make_model, param_count, state_shardings
from MaxText.training.train_step import eval_step, train_step

EXIT_NON_FINITE = 3
BATCH_KEYS = ("inputs", "inputs_position", "inputs_segmentation", "targets", "targets_segmentation")


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


class NonFiniteLoss(RuntimeError):
    """Raised when the loss or gradient norm stops being finite."""


@dataclasses.dataclass
class Setup:  # pylint: disable=too-many-instance-attributes
    """Everything built from the config before the first step."""

    cfg: Config
    mesh: Mesh
    rules: tuple
    model: nn.Module
    tx: object
    schedule: object
    abstract_state: TrainState
    shardings: TrainState  # the same tree, with a NamedSharding per leaf
    batch_sharding: object
    global_batch: int
    flops_per_step: float
    peak_tflops: float
    peak_source: str


def data_config(cfg: Config, global_batch: int) -> input_pipeline.DataConfig:
    return input_pipeline.DataConfig(
        dataset_type=cfg.dataset_type,
        tokenizer_path=cfg.tokenizer_path if cfg.dataset_type == "builtin" else "",
        max_target_length=cfg.max_target_length,
        global_batch_size=global_batch,
        vocab_size=cfg.vocab_size,
        data_shuffle_seed=cfg.data_shuffle_seed,
        eval_fraction=cfg.eval_split_fraction,
        add_bos=cfg.add_bos,
        add_eos=cfg.add_eos,
        packing=cfg.packing,
    )


def build(cfg: Config, devices=None) -> Setup:
    """Mesh, model, optimizer and shardings. Allocates nothing on the devices yet."""
    mesh = mesh_lib.make_mesh(cfg, devices)
    rules = mesh_lib.axis_rules(cfg)
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
    model = make_model(mcfg)
    tx = optimizers.make_optimizer(cfg)
    abstract_state, shardings = state_shardings(model, tx, mesh, rules)
    peak, source = flops.peak_tflops_per_device(cfg.peak_tflops_per_device)
    return Setup(
        cfg=cfg,
        mesh=mesh,
        rules=rules,
        model=model,
        tx=tx,
        schedule=optimizers.learning_rate_schedule(cfg),
        abstract_state=abstract_state,
        shardings=shardings,
        batch_sharding=mesh_lib.logical_sharding(mesh, rules, ("activation_batch", "activation_length")),
        global_batch=global_batch,
        flops_per_step=flops.train_flops_per_step(mcfg, global_batch, cfg.max_target_length),
        peak_tflops=peak,
        peak_source=source,
    )


def compile_steps(s: Setup):
    """The jitted train and eval steps (compiled lazily on first call, once)."""
    cfg = s.cfg
    step_fn = functools.partial(
        train_step, s.model, s.tx, s.schedule, cfg.z_loss_multiplier, cfg.gradient_accumulation_steps,
        cfg.init_weights_seed,
    )  # fmt: skip
    p_train = jax.jit(
        step_fn,
        in_shardings=(s.shardings, s.batch_sharding),
        out_shardings=(s.shardings, None),
        donate_argnums=(0,),
    )
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
        raise NonFiniteLoss(f"non-finite training loss at step {step}: loss={loss}, grad_norm={gnorm}")


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
            # Bytes of the whole global eval set (every host computes the same number cheaply on the host).
            lengths = tokenizer.token_byte_lengths()
            full = input_pipeline.make_eval_batches(dcfg, s.cfg.eval_steps, 0, 1)
            self.num_bytes = sum(
                float((lengths[b["targets"]] * (b["targets_segmentation"] != 0)).sum()) for b in full
            )

    def __call__(self, p_eval, params) -> dict:
        sums = [p_eval(params, b) for b in self.batches]
        ce = float(sum(x["ce"] for x in sums))
        tokens = float(sum(x["tokens"] for x in sums))
        out = {"eval_loss": ce / max(tokens, 1.0)}
        if self.num_bytes:
            out["eval_bits_per_byte"] = ce / math.log(2) / self.num_bytes
        return out


class _Profiler:
    """Traces steps [skip, skip + n) into the run's TensorBoard directory when profiler=xplane."""

    def __init__(self, cfg: Config, logdir: str):
        self.cfg, self.logdir, self.active = cfg, logdir, False

    def before_step(self, step: int) -> None:
        if self.cfg.profiler == "xplane" and step == self.cfg.skip_first_n_steps_for_profiler:
            jax.profiler.start_trace(self.logdir)
            self.active = True

    def after_step(self, step: int, state) -> None:
        if self.active and step >= self.cfg.skip_first_n_steps_for_profiler + self.cfg.profiler_steps:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
            log(f"profile of {self.cfg.profiler_steps} steps written under {self.logdir}")


def _restore_or_init(s: Setup, ckpt, data_iter, tokenizer_id):
    """Resumes the latest checkpoint of this run, else starts fresh (optionally from load_parameters_path)."""
    cfg = s.cfg
    target = checkpointing.abstract_with_shardings(s.abstract_state, s.shardings)
    latest = ckpt.latest_step() if ckpt else None
    if latest is not None:
        state, data_state, meta = ckpt.restore(latest, target)
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
        data_iter.set_state(data_state)
        log(f"resumed run {cfg.run_name!r} from step {latest} ({ckpt.directory})")
        return state
    state = init_state(s.model, s.tx, cfg.init_weights_seed, s.shardings)
    if cfg.load_parameters_path:
        params = checkpointing.load_params(cfg.load_parameters_path, target.params)
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
    }


def train(cfg: Config) -> int:  # pylint: disable=too-many-locals,too-many-branches,too-many-statements
    """Runs (or resumes) training as configured. Returns the process exit code."""
    s = build(cfg)
    directory = run_dir(cfg)
    dcfg = data_config(cfg, s.global_batch)
    tokenizer = input_pipeline.load_tokenizer(cfg.tokenizer_path) if cfg.dataset_type == "builtin" else None
    tokenizer_id = tokenizer.identity() if tokenizer else None
    data_iter = input_pipeline.make_train_iterator(dcfg, jax.process_index(), jax.process_count())
    ckpt = None
    if cfg.enable_checkpointing:
        ckpt = checkpointing.Checkpointer(
            checkpointing.checkpoint_dir(directory), cfg.max_num_checkpoints_to_keep, cfg.async_checkpointing
        )
    writer = MetricsWriter(directory)
    stop = _StopFlag()
    meta = {"config": checkpointing.config_dict(cfg), "tokenizer": tokenizer_id}
    n_params = None
    try:
        with mesh_lib.activate(s.mesh, s.rules):
            state = _restore_or_init(s, ckpt, data_iter, tokenizer_id)
            n_params = param_count(state.params)
            log(
                f"model: {n_params:,} params | devices: {s.mesh.devices.size} ({jax.devices()[0].device_kind}) "
                f"mesh {dict(s.mesh.shape)} | global batch {s.global_batch} x {cfg.max_target_length} tokens | "
                f"{s.flops_per_step / 1e12:.3f} TFLOP/step | peak {s.peak_tflops:.3f} TFLOP/s/dev ({s.peak_source})"
            )
            p_train, p_eval = compile_steps(s)
            evaluator = _Evaluator(s, dcfg, tokenizer)
            profiler = _Profiler(cfg, f"{directory}/tensorboard")
            step = int(state.step)
            if step >= cfg.steps:
                log(f"run {cfg.run_name!r} already trained to step {step} (steps={cfg.steps}); nothing to do")
                return 0
            saved_step, evaluated_step = step, None
            tokens_per_step = s.global_batch * cfg.max_target_length
            mark_time, mark_step, pending = None, step, None
            t_start = time.perf_counter()
            while step < cfg.steps and not stop.requested:
                profiler.before_step(step)
                state, metrics = p_train(state, to_device(s, next(data_iter)))
                step += 1
                profiler.after_step(step, state)
                if pending is not None:
                    _check_finite(*pending)
                pending = (step, metrics)
                if mark_time is None:  # the first step compiles; time from its end
                    _check_finite(*pending)
                    mark_time, mark_step = time.perf_counter(), step
                    log(f"first step done in {mark_time - t_start:.1f}s (includes compilation)")
                last = step == cfg.steps
                if step % cfg.log_period == 0 or last:
                    _check_finite(*pending)
                    now = time.perf_counter()
                    per_step = (
                        (now - mark_time) / max(step - mark_step, 1) if step > mark_step else now - t_start
                    )
                    record = _step_record(s, step, metrics, per_step, tokens_per_step)
                    writer.write(record)
                    log(step_line(record, cfg.steps, per_step * (cfg.steps - step)))
                if (cfg.eval_interval and step % cfg.eval_interval == 0) or last:
                    result = {"step": step, **evaluator(p_eval, state.params)}
                    writer.write(result)
                    log(
                        " | ".join(
                            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                        )
                    )
                    evaluated_step = step
                if ckpt and (step % cfg.checkpoint_period == 0 or last):
                    _check_finite(*pending)
                    ckpt.save(step, state, data_iter.get_state(), meta)
                    saved_step = step
            if stop.requested:
                log(f"received {stop.requested} at step {step}: saving a checkpoint and exiting")
                if ckpt and saved_step != step:
                    _check_finite(*pending)
                    ckpt.save(step, state, data_iter.get_state(), meta)
            del evaluated_step
            log(f"trained to step {step} in {format_duration(time.perf_counter() - t_start)}")
            return 0
    except NonFiniteLoss as e:
        last_good = ckpt.latest_step() if ckpt else None
        log(
            f"error: {e}. Stopping; the last good checkpoint is step {last_good} in {ckpt.directory if ckpt else '-'}"
        )
        return EXIT_NON_FINITE
    finally:
        stop.restore()
        if ckpt:
            ckpt.close()
        writer.close()
