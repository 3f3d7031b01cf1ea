"""Step time and MFU of every parallelism strategy on 8 devices, relative to one device.

    python3 benchmarks/strategy_throughput.py [--fast] [--strategies a,b,...] [--steps N] [--warmup W]
        [--out PATH] [key=value ...]

One process with 8 devices (8 fake CPU devices unless XLA_FLAGS or a GPU host says otherwise). Each
strategy trains the same model on the same global batch (8 rows) with benchmarks/train_throughput.py's
measurement (trainer.build on the first `devices` devices, warm-up steps, then timed steps of host batch ->
device -> step -> block_until_ready), so every row does the same FLOPs per step:

  single           1 device (the baseline of the dense rows)
  data             ici_data_parallelism=8
  fsdp             ici_fsdp_parallelism=8
  fsdp_tensor      fsdp 4 x tensor 2
  tensor_sequence  fsdp 4 x tensor_sequence 2
  context          fsdp 4 x context 2 (keys/values all-gathered along the length)
  pipeline         stage 2 x fsdp 4, num_pipeline_microbatches 4 (GPipe schedule)
  moe_single       the MoE model (mixtral block, 8 experts, top-2) on 1 device (the expert row's baseline)
  expert           the MoE model on expert 4 x fsdp 2 (all-to-all dispatch)

Reported per row: median step time, step time relative to its single-device baseline (< 1 is faster),
tokens/s, MFU as the trainer defines it (per device of the row, JSON only) and host MFU = analytic FLOPs per
step / step time / (peak per device x all the host's devices), i.e. against the whole host's peak whatever
the row uses (on CPU the per-device peak is the measured host matmul peak / 8). Fake CPU devices share
the host's cores, so on CPU the relative figures measure partitioning and collective overhead rather than
scaling; on a GPU or TPU host with 8 devices they measure scaling. --fast: the tiny test model, 1 warm-up
and 2 timed steps (the test suite's smoke run). Writes results/strategy_throughput_<fast|full>_<time>.json.
"""

import argparse
import os
import sys

import train_throughput
from results_io import publish

DENSE = {
    "full": ("base_emb_dim=256", "base_num_decoder_layers=4", "base_num_query_heads=4", "base_num_kv_heads=4",
             "head_dim=64", "base_mlp_dim=1024", "vocab_size=4096", "max_target_length=256"),
    "fast": ("model_name=test-tiny", "base_num_decoder_layers=2", "max_target_length=32"),
}  # fmt: skip
MOE = ("decoder_block=mixtral", "num_experts=8", "num_experts_per_tok=2", "norm_topk_prob=true")
MOE_DIM = {"full": "base_moe_mlp_dim=512", "fast": "base_moe_mlp_dim=32"}
COMMON = ("dataset_type=synthetic", "enable_checkpointing=false", "dtype=float32", "weight_dtype=float32")
ONE = ("per_device_batch_size=8",)
EIGHT = ("per_device_batch_size=1",)

# name -> (devices, model ("dense" or "moe"), mesh overrides); each row's baseline is its model's 1-device row.
STRATEGIES = {
    "single": (1, "dense", ONE),
    "data": (8, "dense", EIGHT + ("ici_data_parallelism=8", "ici_fsdp_parallelism=1")),
    "fsdp": (8, "dense", EIGHT + ("ici_fsdp_parallelism=8",)),
    "fsdp_tensor": (8, "dense", EIGHT + ("ici_fsdp_parallelism=4", "ici_tensor_parallelism=2")),
    "tensor_sequence": (8, "dense", EIGHT + ("ici_fsdp_parallelism=4", "ici_tensor_sequence_parallelism=2")),
    "context": (8, "dense", EIGHT + ("ici_fsdp_parallelism=4", "ici_context_parallelism=2")),
    "pipeline": (8, "dense", EIGHT + ("ici_pipeline_parallelism=2", "ici_fsdp_parallelism=4",
                                      "num_pipeline_microbatches=2")),
    "moe_single": (1, "moe", ONE),
    "expert": (8, "moe", EIGHT + ("ici_expert_parallelism=4", "ici_fsdp_parallelism=2")),
}  # fmt: skip
BASELINE = {"dense": "single", "moe": "moe_single"}


def parse_args(argv):
    """The command line; adds the baseline rows the chosen strategies are measured against."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides applied to every row")
    parser.add_argument("--fast", action="store_true", help="tiny model, 1 warm-up + 2 timed steps")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10, --fast 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps incl. compile (default 2)")
    parser.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    names = [n for n in args.strategies.split(",") if n]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        parser.error(f"--strategies: unknown {unknown}; expected some of {', '.join(STRATEGIES)}")
    # Every measured row needs its baseline.
    args.names = [n for n in STRATEGIES if n in names or n in {BASELINE[STRATEGIES[m][1]] for m in names}]
    args.steps = args.steps or (2 if args.fast else 10)
    args.warmup = args.warmup or (1 if args.fast else 2)
    args.preset = "fast" if args.fast else "full"
    args.config = train_throughput.DEFAULT_CONFIG
    return args


def row_overrides(name: str, size: str, extra) -> list:
    devices, model, mesh = STRATEGIES[name]
    del devices
    moe = MOE + (MOE_DIM[size],) if model == "moe" else ()
    return [*DENSE[size], *moe, *COMMON, *mesh, *extra]


def measure(args, name: str, xla_flags: str, host_malloc: str) -> dict:
    """One strategy through train_throughput.run on its first `devices` devices."""
    # pylint: disable=import-outside-toplevel
    import jax

    from MaxText.config import load_config

    overrides = row_overrides(name, args.preset, args.overrides)
    cfg = load_config([args.config, *overrides])
    run_args = argparse.Namespace(
        config=args.config, preset=None, overrides=overrides, steps=args.steps, warmup=args.warmup
    )
    r = train_throughput.run(run_args, cfg, xla_flags, host_malloc, jax.devices()[: STRATEGIES[name][0]])
    return {
        "devices": r["num_devices"],
        "mesh": {k: v for k, v in r["mesh"].items() if v > 1},
        "overrides": overrides,
        "median_step_s": r["median_step_s"],
        "min_step_s": r["min_step_s"],
        "compile_s": r["compile_s"],
        "tokens_per_s": r["tokens_per_s"],
        "analytic_flops_per_step": r["analytic_flops_per_step"],
        "mfu": r["mfu"],
        "host_mfu": r["analytic_flops_per_step"]
        / r["median_step_s"]
        / (r["peak_tflops_per_device"] * 1e12 * jax.local_device_count()),
        "peak_tflops_per_device": r["peak_tflops_per_device"],
        "final_loss": r["final_loss"],
    }


def table(rows: dict) -> str:
    lines = ["| strategy | mesh | ms/step | relative step time | tokens/s | host MFU |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, r in rows.items():
        mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items()) or "1 device"
        lines.append(
            f"| {name} | {mesh} | {1e3 * r['median_step_s']:.1f} | {r['relative_step_time']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {100 * r['host_mfu']:.1f}% |"
        )
    return "\n".join(lines)


def main(argv) -> int:
    """Measures each strategy, relates it to its single-device baseline, prints the table, writes JSON."""
    args = parse_args(argv)
    host_malloc = train_throughput.tune_host_malloc()
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        ).strip()
    xla_flags = train_throughput.set_environment("")
    sys.path.insert(0, train_throughput.REPO_ROOT)
    import jax  # pylint: disable=import-outside-toplevel

    from MaxText.config import exit_on_config_error  # pylint: disable=import-outside-toplevel

    if jax.device_count() < 8:
        print(f"strategy_throughput needs 8 devices, found {jax.device_count()}", file=sys.stderr)
        return 2
    rows = {}
    for name in args.names:
        rows[name] = exit_on_config_error(measure)(args, name, xla_flags, host_malloc)
        print(f"{name}: {1e3 * rows[name]['median_step_s']:.1f} ms/step", flush=True)
    for name, r in rows.items():
        base = rows[BASELINE[STRATEGIES[name][1]]]
        r["relative_step_time"] = r["median_step_s"] / base["median_step_s"]
    record = {
        "benchmark": "strategy_throughput",
        "size": args.preset,
        "device_kind": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "host_cpus": os.cpu_count(),
        "jax_version": jax.__version__,
        "xla_flags": xla_flags,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "global_batch": 8,
        "relative_step_time": "median step time / median step time of the same model on 1 device",
        "rows": rows,
    }
    publish(record, args, "strategy_throughput", table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
