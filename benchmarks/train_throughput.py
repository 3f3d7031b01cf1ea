"""Training throughput of any config, measured on the exact setup the trainer builds.

    python3 benchmarks/train_throughput.py [configs/base.yml] [key=value ...] [--preset reference]
        [--steps N] [--warmup W] [--out PATH]

Builds the mesh, model, optimizer and jitted train step with `MaxText.training.trainer` (build,
compile_steps, init_state, to_device) and the trainer's data stream, runs W warm-up steps (the first one
compiles), then N timed steps. Each timed step is: next host batch -> device -> train step ->
block_until_ready, so per-step times are honest wall times of what the training loop does per step.

Reported (stdout and a JSON file under benchmarks/results/ unless --out names one):
  median step time, tokens/s = global batch x T / median step time,
  TFLOP/s/device = analytic FLOPs per step / median step time / devices (MaxText.training.flops),
  MFU = TFLOP/s/device / peak TFLOP/s per device (the peak's value and source are recorded),
  XLA's cost-analysis FLOPs of the compiled step where the backend reports them.

Runs on one device unless XLA_FLAGS already sets --xla_force_host_platform_device_count. Flags named by
--xla-flags are appended to XLA_FLAGS before JAX starts (so they apply to this run only).
"""

import argparse
import ctypes
import ctypes.util
import datetime
import os
import platform
import statistics
import sys
import time

from results_io import publish

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "base.yml")

# The reference model of the throughput issue: a 4-layer Llama, D=256, vocab 32k, T=256, float32, untied
# output projection (logits_dense), as upstream MaxText's default and Hugging Face's LlamaForCausalLM
# (tie_word_embeddings=False) build it, so the comparison is like for like. FLOPs do not depend on tying.
PRESETS = {
    "reference": (
        "base_emb_dim=256",
        "base_num_decoder_layers=4",
        "base_num_query_heads=4",
        "base_num_kv_heads=4",
        "head_dim=64",
        "base_mlp_dim=1024",
        "vocab_size=32000",
        "max_target_length=256",
        "per_device_batch_size=4",
        "dtype=float32",
        "weight_dtype=float32",
        "dataset_type=synthetic",
        "logits_via_embedding=false",
    ),
}

FLOPS_FORMULA = (
    "6 * P_matmul * B * T + 12 * B * pairs * N * H * L + 6 * B * T * D * V "
    "(P_matmul = non-embedding matmul params, pairs = T^2/2 causal; remat recompute not counted; LoRA: frozen "
    "weights and logits 4 instead of 6, adapter params 6, MaxText/training/flops.py)"
)


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def tune_host_malloc() -> str:
    """Makes glibc keep freed memory for reuse. Must run before JAX starts its threads.

    XLA:CPU allocates its large buffers (logits [B, T, V], temporaries) afresh on every step. glibc serves
    each one with mmap and returns it with munmap, so every step page-faults all of that memory in again:
    on this 2-core VM that was ~20% of the step's CPU time, spent in the kernel. One arena, no mmap and no
    trimming make the heap grow to the step's peak once and be reused (a caching allocator, in effect).
    Returns what was done, for the record.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = all(
            libc.mallopt(param, value)
            for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
        )
    except (OSError, AttributeError, TypeError):
        ok = False
    if not ok:
        return "default (mallopt unavailable)"
    return "glibc mallopt: arena_max=1, mmap_max=0, trim_threshold=2^31-1"


def parse_args(argv):
    """The command line: config path and key=value overrides, plus the benchmark's own options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default=None, help="YAML config (default configs/base.yml)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (after the preset's)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a named set of overrides")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first, incl. compile (default 3)"
    )
    parser.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/...)")
    parser.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for this run, e.g. '--xla_cpu_...'")
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned: glibc keeps freed memory for reuse (see tune_host_malloc); default: leave malloc alone",
    )
    args = parser.parse_intermixed_args(argv)
    if args.config is not None and "=" in args.config:
        args.overrides = [args.config] + args.overrides
        args.config = None
    args.config = args.config or DEFAULT_CONFIG
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"expected key=value overrides, got {bad}")
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1 (the first warm-up step compiles)")
    return args


def set_environment(extra_xla_flags: str) -> str:
    """One CPU device by default; must run before JAX is imported. Returns the XLA_FLAGS in effect."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags += " --xla_force_host_platform_device_count=1"
    flags = f"{flags} {extra_xla_flags}".strip()
    os.environ["XLA_FLAGS"] = flags
    return flags


def overrides_dict(items) -> dict:
    return dict(item.split("=", 1) for item in items)


def _cost_flops(compiled):
    """XLA's FLOP estimate of one compiled step, or None where the backend gives none."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # pylint: disable=broad-exception-caught
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(args, cfg, xla_flags: str, host_malloc: str, devices=None) -> dict:
    """Builds everything like the trainer (on `devices`, default all), times the steps and returns the
    result record."""
    # pylint: disable=import-outside-toplevel
    import jax

    from MaxText import input_pipeline
    from MaxText.config import non_default_items
    from MaxText.parallel import mesh as mesh_lib
    from MaxText.training import trainer
    from MaxText.training.train_state import init_state, param_count

    preset = list(PRESETS[args.preset]) if args.preset else []
    s = trainer.build(cfg, devices)
    p_train, _ = trainer.compile_steps(s)
    data_iter = input_pipeline.make_train_iterator(
        trainer.data_config(cfg, s.global_batch), jax.process_index(), jax.process_count()
    )
    tokens_per_step = s.global_batch * cfg.max_target_length
    with mesh_lib.activate(s.mesh, s.rules):
        state = init_state(s.model, s.tx, cfg.init_weights_seed, s.shardings)
        n_params = param_count(state.params)
        batch = trainer.to_device(s, next(data_iter))
        t0 = time.perf_counter()
        compiled = p_train.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        xla_flops = _cost_flops(compiled)
        times, cpu_times, metrics = [], [], None
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                os_times = os.times()
            t0, c0 = time.perf_counter(), time.process_time()
            if i > 0:
                batch = trainer.to_device(s, next(data_iter))
            state, metrics = p_train(state, batch)
            jax.block_until_ready((state, metrics))
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
        final_loss = float(metrics["loss"])
        os_times = [(b - a) / args.steps for a, b in zip(os_times, os.times())]

    median = statistics.median(times)
    n_dev = s.mesh.devices.size
    tflops = s.flops_per_step / median / n_dev / 1e12
    return {
        "config": os.path.relpath(os.path.abspath(args.config), REPO_ROOT),
        "preset": args.preset,
        "preset_overrides": overrides_dict(preset),
        "overrides": overrides_dict(args.overrides),
        "non_default_config": {k: v for k, v in non_default_items(cfg).items() if k != "run_name"},
        "device_kind": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "num_devices": n_dev,
        "mesh": dict(s.mesh.shape),
        "host_cpus": os.cpu_count(),
        "host": platform.node(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "xla_flags": xla_flags,
        "host_malloc": host_malloc,
        "params": n_params,
        "global_batch": s.global_batch,
        "max_target_length": cfg.max_target_length,
        "tokens_per_step": tokens_per_step,
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "compile_s": compile_s,
        "step_times_s": times,
        "step_cpu_times_s": cpu_times,
        "median_step_s": median,
        "median_step_cpu_s": statistics.median(cpu_times),
        "mean_step_user_s": os_times[0],
        "mean_step_system_s": os_times[1],
        "min_step_s": min(times),
        "mean_step_s": statistics.fmean(times),
        "p90_step_s": _percentile(times, 0.9),
        "tokens_per_s": tokens_per_step / median,
        "analytic_flops_per_step": s.flops_per_step,
        "flops_formula": FLOPS_FORMULA,
        "xla_cost_analysis_flops_per_step": xla_flops,
        "tflops_per_device": tflops,
        "peak_tflops_per_device": s.peak_tflops,
        "peak_source": s.peak_source,
        "mfu": tflops / s.peak_tflops,
        "mfu_formula": "analytic FLOPs per step / median step time / devices / peak FLOP/s per device",
        "final_loss": final_loss,
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def summary(r: dict) -> str:
    xla = r["xla_cost_analysis_flops_per_step"]
    xla_text = f"{xla / 1e9:.2f} GFLOP" if xla is not None else "n/a"
    return "\n".join(
        [
            f"device: {r['num_devices']} x {r['device_kind']} ({r['host_cpus']} host CPUs) | jax {r['jax_version']} | "
            f"params {r['params']:,} | batch {r['global_batch']} x {r['max_target_length']}",
            f"steps: {r['steps']} timed after {r['warmup_steps']} warm-up | compile {r['compile_s']:.1f}s | "
            f"median {r['median_step_s'] * 1e3:.1f} ms (min {r['min_step_s'] * 1e3:.1f}, "
            f"p90 {r['p90_step_s'] * 1e3:.1f}) | process CPU {r['median_step_cpu_s'] * 1e3:.0f} ms/step "
            f"(user {r['mean_step_user_s'] * 1e3:.0f}, system {r['mean_step_system_s'] * 1e3:.0f})",
            f"tokens/s: {r['tokens_per_s']:,.0f} | TFLOP/s/device: {r['tflops_per_device']:.4f} | "
            f"MFU: {100 * r['mfu']:.1f}%",
            f"FLOPs/step: analytic {r['analytic_flops_per_step'] / 1e9:.2f} GFLOP = {r['flops_formula']}; "
            f"XLA cost analysis {xla_text}",
            f"peak: {r['peak_tflops_per_device']:.4f} TFLOP/s/device ({r['peak_source']}); "
            f"MFU = {r['mfu_formula']}",
            f"XLA_FLAGS: {r['xla_flags']} | malloc: {r['host_malloc']} | final loss {r['final_loss']:.4f}",
        ]
    )


def main(argv) -> int:
    """Builds the configured setup, warms up, times the steps, prints and writes the record."""
    args = parse_args(argv)
    host_malloc = tune_host_malloc() if args.malloc == "tuned" else "default"
    xla_flags = set_environment(args.xla_flags)
    sys.path.insert(0, REPO_ROOT)
    from MaxText.config import exit_on_config_error, load_config  # pylint: disable=import-outside-toplevel

    # A config error exits with code 2 and one line, before any device work.
    preset = list(PRESETS[args.preset]) if args.preset else []
    cfg = exit_on_config_error(load_config)([args.config] + preset + list(args.overrides))
    result = exit_on_config_error(run)(args, cfg, xla_flags, host_malloc)
    publish(result, args, "train_throughput", summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
