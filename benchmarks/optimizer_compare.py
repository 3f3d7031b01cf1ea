"""Optimizers compared on one model and one token budget: loss curves, eval bits/byte, speed, state size.

    python3 benchmarks/optimizer_compare.py [key=value ...] [--optimizers adamw,muon,lion,adafactor]
        [--steps 300] [--lr NAME=VALUE ...] [--workdir DIR] [--quick] [--out PATH]

Trains the quickstart model (configs/base.yml: D 256, 4 layers, the built-in Shakespeare corpus) once per
optimizer, each run from the same initialisation on the same batches for the same number of steps, so every
optimizer sees the same tokens. Each run is its own subprocess, from the repo root:

    python3 -m MaxText.train configs/base.yml enable_checkpointing=false log_period=L eval_interval=E
        [--quick model] [key=value ...] opt_type=NAME learning_rate=LR steps=N run_name=NAME
        base_output_directory=DIR

with L = min(10, steps // 20) (at least 1) and E = steps // 6 (at least 1), so there are several evals and
one at the last step. The peak learning rate comes from DEFAULT_LR below unless --lr NAME=VALUE says
otherwise; everything else (lr_schedule_type and warmup, clipping, weight decay) is base.yml's for every
optimizer, and key=value overrides apply to every run. Runs go under a fresh directory in --workdir (kept) or in a
temporary directory (removed afterwards). A run that fails stops the comparison with its exit code (2 for a
config error, e.g. an opt_type this tree does not have) and the tail of its output.

Before any training, one short subprocess builds each optimizer's setup (MaxText.training.trainer.build:
abstract shapes only, nothing trained or allocated) and records the parameter count and the optimizer state
size: sum of x.size * itemsize over the leaves of abstract_state.opt_state, the whole state over all devices.
A config error there stops the comparison before the first training run.

Recorded per optimizer (JSON under benchmarks/results/optimizer_compare_<timestamp>.json unless --out says
otherwise), read back from each run's metrics.jsonl:
  eval_bits_per_byte and eval_loss of the final eval (at the last step), and every eval as a curve;
  the training loss curve (every logged step: loss, lr, grad_norm);
  median_step_s: median of the logged step_time_s, leaving out the first logged record (its window can
  include compilation); tokens_per_s = tokens per step / median_step_s; median TFLOP/s/device and MFU;
  opt_state_bytes and params.
A PNG with the same stem (matplotlib, Agg) plots the training loss per optimizer against step, and eval
bits/byte (eval loss when the data has no byte count, e.g. dataset_type=synthetic) in a second panel. A
markdown table is printed: optimizer | lr | eval bits/byte | eval loss | ms/step | opt-state MiB | params.

--quick: a tiny model (D 64, 2 layers, 2 heads of 32, MLP 128, T 64, batch 2) for 20 steps, a smoke check.
"""

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from results_io import RESULTS_DIR, write_record

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_YML = "configs/base.yml"  # relative to REPO_ROOT, the subprocesses' working directory

DEFAULT_OPTIMIZERS = "adamw,muon,lion,adafactor"
# Peak learning rates (--lr NAME=VALUE overrides). Muon scales its orthogonalised update to a consistent RMS,
# matched to AdamW's, so AdamW's learning rate carries over; Lion's sign update is +-1 per element, larger
# than Adam's, so it takes a several times smaller one.
DEFAULT_LR = {"adamw": 3e-3, "muon": 3e-3, "lion": 3e-4, "adafactor": 3e-3}

QUICK_MODEL = (
    "base_emb_dim=64",
    "base_num_decoder_layers=2",
    "base_mlp_dim=128",
    "base_num_query_heads=2",
    "base_num_kv_heads=2",
    "head_dim=32",
    "max_target_length=64",
    "per_device_batch_size=2",
)
QUICK_STEPS = 20
EVALS = 6  # evaluations per run, the last at the final step
# Keys the script sets per run; overriding them as key=value would break the comparison.
OWNED_KEYS = {
    "opt_type": "--optimizers",
    "learning_rate": "--lr NAME=VALUE",
    "steps": "--steps",
    "run_name": "(one per optimizer)",
    "base_output_directory": "--workdir",
}
TAIL_LINES = 40
_STATE_MARK = "OPTIMIZER_STATE_SIZES "


def parse_args(argv):
    """The command line: key=value overrides for every run plus the comparison's own options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, applied to every run")
    parser.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS, help=f"default {DEFAULT_OPTIMIZERS}")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 300; --quick 20)")
    parser.add_argument(
        "--lr", action="append", default=[], metavar="NAME=VALUE", help="peak learning rate of one optimizer"
    )
    parser.add_argument("--workdir", default=None, help="keep the run directories under this directory")
    parser.add_argument(
        "--quick", action="store_true", help=f"tiny model, {QUICK_STEPS} steps: a smoke check"
    )
    parser.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/...)")
    parser.add_argument("--state-sizes", default=None, help=argparse.SUPPRESS)  # internal: the size probe
    args = parser.parse_intermixed_args(argv)
    if args.state_sizes is not None:
        return args
    args.optimizers = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    if not args.optimizers or len(set(args.optimizers)) != len(args.optimizers):
        parser.error(f"--optimizers: expected distinct comma-separated names, got {args.optimizers}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"expected key=value overrides, got {bad}")
    for item in args.overrides:
        key = item.split("=", 1)[0].strip().lstrip("-")
        if key in OWNED_KEYS:
            parser.error(f"{item!r}: the script sets {key} per run; use {OWNED_KEYS[key]}")
    args.steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else 300)
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    args.learning_rates = _learning_rates(parser, args.lr, args.optimizers)
    return args


def _learning_rates(parser, items, optimizers) -> dict:
    """DEFAULT_LR for the chosen optimizers, with --lr NAME=VALUE on top."""
    given = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            given[name.strip()] = float(value)
        except ValueError:
            parser.error(f"--lr {item!r}: expected NAME=VALUE, VALUE a number")
        if given[name.strip()] <= 0:
            parser.error(f"--lr {item!r}: the learning rate must be positive")
    unused = sorted(set(given) - set(optimizers))
    if unused:
        parser.error(f"--lr names {unused}, which --optimizers does not list")
    missing = [name for name in optimizers if name not in given and name not in DEFAULT_LR]
    if missing:
        parser.error(f"no default learning rate for {missing}; give --lr NAME=VALUE")
    return {name: given.get(name, DEFAULT_LR.get(name)) for name in optimizers}


def run_keys(args, name: str, workdir: str) -> list:
    """The key=value arguments of one optimizer's run (after configs/base.yml); later keys win."""
    return [
        "enable_checkpointing=false",
        f"log_period={max(1, min(10, args.steps // 20))}",
        f"eval_interval={max(1, args.steps // EVALS)}",
        *(QUICK_MODEL if args.quick else ()),
        *args.overrides,
        f"opt_type={name}",
        f"learning_rate={args.learning_rates[name]!r}",
        f"steps={args.steps}",
        f"run_name={name}",
        f"base_output_directory={workdir}",
    ]


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _fail(what: str, command: list, returncode: int, stdout: str, stderr: str) -> int:
    """Prints a failed subprocess's output tails and command; returns the exit code to leave with."""
    for stream, text in (("stdout", stdout), ("stderr", stderr)):
        if text.strip():
            print(f"----- {stream} (last {TAIL_LINES} lines)\n{_tail(text)}", file=sys.stderr)
    print(f"{what} failed (exit {returncode}): {shlex.join(command)}", file=sys.stderr)
    return returncode if 0 < returncode < 256 else 1


def state_sizes(spec: dict) -> dict:
    """{optimizer: {params, opt_state_bytes, ...}} from trainer.build of each run's config (no training)."""
    # pylint: disable=import-outside-toplevel
    import jax

    sys.path.insert(0, REPO_ROOT)
    from MaxText.config import exit_on_config_error, load_config
    from MaxText.training import trainer
    from MaxText.training.train_state import param_count

    out = {}
    for name, keys in spec.items():
        # A set peak skips the CPU matmul measurement, which only MFU needs.
        cfg = exit_on_config_error(load_config)([BASE_YML, "peak_tflops_per_device=1", *keys])
        s = exit_on_config_error(trainer.build)(cfg)
        leaves = jax.tree.leaves(s.abstract_state.opt_state)
        out[name] = {
            "params": param_count(s.abstract_state.params),
            "opt_state_bytes": sum(int(x.size) * x.dtype.itemsize for x in leaves),
            "opt_state_arrays": len(leaves),
            "global_batch": s.global_batch,
            "max_target_length": cfg.max_target_length,
            "tokens_per_step": s.global_batch * cfg.max_target_length,
            "num_devices": int(s.mesh.devices.size),
            "device_kind": jax.devices()[0].device_kind,
            "platform": jax.default_backend(),
            "jax_version": jax.__version__,
        }
    return out


def probe_state_sizes(args, workdir: str):
    """Runs state_sizes in a subprocess (so this process never holds an accelerator); (sizes, rc)."""
    spec = {name: run_keys(args, name, workdir) for name in args.optimizers}
    command = [sys.executable, os.path.abspath(__file__), "--state-sizes", json.dumps(spec)]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_STATE_MARK)]
    if proc.returncode != 0 or not lines:
        return None, _fail("optimizer state size probe", command, proc.returncode, proc.stdout, proc.stderr)
    return json.loads(lines[-1][len(_STATE_MARK) :]), 0


def read_metrics(path: str) -> tuple:
    """(step records, eval records) of a run's metrics.jsonl."""
    steps, evals = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            if "eval_loss" in record:
                evals.append(record)
            elif "loss" in record:
                steps.append(record)
    return steps, evals


def summarise(name: str, lr: float, steps: list, evals: list, sizes: dict) -> dict:
    """One optimizer's result: final eval, curves, median speed (first logged record left out), sizes."""
    timed = steps[1:] or steps
    median_step = statistics.median(r["step_time_s"] for r in timed)
    final = evals[-1] if evals else {}
    return {
        "optimizer": name,
        "learning_rate": lr,
        "final_step": steps[-1]["step"] if steps else None,
        "eval_step": final.get("step"),
        "eval_loss": final.get("eval_loss"),
        "eval_bits_per_byte": final.get("eval_bits_per_byte"),
        "median_step_s": median_step,
        "timed_records": len(timed),
        "tokens_per_s": sizes["tokens_per_step"] / median_step,
        "median_tflops_per_device": statistics.median(r["tflops_per_device"] for r in timed),
        "median_mfu": statistics.median(r["mfu"] for r in timed),
        "params": sizes["params"],
        "opt_state_bytes": sizes["opt_state_bytes"],
        "opt_state_arrays": sizes["opt_state_arrays"],
        "loss_curve": [
            {k: r[k] for k in ("step", "loss", "lr", "grad_norm", "step_time_s") if k in r} for r in steps
        ],
        "eval_curve": [
            {k: r[k] for k in ("step", "eval_loss", "eval_bits_per_byte") if k in r} for r in evals
        ],
    }


def train_one(args, name: str, workdir: str, sizes: dict):
    """Trains one optimizer in a subprocess (output to train.{stdout,stderr}.log in its run directory);
    (result, 0), or (None, the exit code to leave with)."""
    command = [sys.executable, "-m", "MaxText.train", BASE_YML, *run_keys(args, name, workdir)]
    run_dir = os.path.join(workdir, name)
    os.makedirs(run_dir, exist_ok=True)
    logs = {stream: os.path.join(run_dir, f"train.{stream}.log") for stream in ("stdout", "stderr")}
    print(f"[{name}] lr {args.learning_rates[name]:g}, {args.steps} steps: {shlex.join(command)}", flush=True)
    print(f"[{name}] log: {logs['stdout']}", flush=True)
    t0 = time.perf_counter()
    with (
        open(logs["stdout"], "w", encoding="utf-8") as out,
        open(logs["stderr"], "w", encoding="utf-8") as err,
    ):
        returncode = subprocess.run(command, cwd=REPO_ROOT, stdout=out, stderr=err, check=False).returncode
    wall = time.perf_counter() - t0
    text = {}
    for stream, path in logs.items():
        with open(path, encoding="utf-8", errors="replace") as f:
            text[stream] = f.read()
    if returncode != 0:
        return None, _fail(
            f"training with opt_type={name}", command, returncode, text["stdout"], text["stderr"]
        )
    metrics = os.path.join(run_dir, "metrics.jsonl")
    steps, evals = read_metrics(metrics) if os.path.isfile(metrics) else ([], [])
    if not steps or not evals or steps[-1]["step"] != args.steps:
        _fail(f"training with opt_type={name}", command, returncode, text["stdout"], text["stderr"])
        print(
            f"[{name}] {metrics}: no complete run ({len(steps)} step, {len(evals)} eval records)",
            file=sys.stderr,
        )
        return None, 1
    result = summarise(name, args.learning_rates[name], steps, evals, sizes)
    result.update(command=shlex.join(command), wall_s=wall)
    bpb = result["eval_bits_per_byte"]
    print(
        f"[{name}] done in {wall:.0f}s: eval loss {result['eval_loss']:.4f}"
        + (f", {bpb:.4f} bits/byte" if bpb is not None else "")
        + f", {result['median_step_s'] * 1e3:.1f} ms/step",
        flush=True,
    )
    return result, 0


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(results: list) -> str:
    """The markdown summary table."""
    lines = [
        "| optimizer | lr | eval bits/byte | eval loss | ms/step | opt-state MiB | params |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['optimizer']} | {r['learning_rate']:g} | {_fmt(r['eval_bits_per_byte'], '.4f')} | "
            f"{_fmt(r['eval_loss'], '.4f')} | {r['median_step_s'] * 1e3:,.1f} | "
            f"{r['opt_state_bytes'] / 2**20:,.2f} | {r['params']:,} |"
        )
    return "\n".join(lines)


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot(results: list, path: str, title: str) -> None:
    """Training loss vs step (left) and eval bits/byte, or eval loss without byte counts, vs step (right)."""
    # Optional: not in requirements.txt, so lint may run where it is missing.
    import matplotlib  # pylint: disable=import-error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-error

    use_bpb = all(r["eval_bits_per_byte"] is not None for r in results)
    key, label = ("eval_bits_per_byte", "eval bits/byte") if use_bpb else ("eval_loss", "eval loss")
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        name = f"{r['optimizer']} (lr {r['learning_rate']:g})"
        ax_loss.plot([p["step"] for p in r["loss_curve"]], [p["loss"] for p in r["loss_curve"]], label=name)
        ax_eval.plot(
            [p["step"] for p in r["eval_curve"]], [p[key] for p in r["eval_curve"]], "o-", label=name
        )
    for ax, ylabel in ((ax_loss, "training loss"), (ax_eval, label)):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(args, workdir: str) -> int:
    """Probes state sizes, trains each optimizer, then writes the JSON and the plot and prints the table."""
    plots = have_matplotlib()
    if not plots:
        print(
            "note: matplotlib is not installed; the JSON is written, the PNG plot is skipped", file=sys.stderr
        )
    sizes, code = probe_state_sizes(args, workdir)
    if code:
        return code
    results = []
    for name in args.optimizers:
        result, code = train_one(args, name, workdir, sizes[name])
        if code:
            return code
        results.append(result)
    first = sizes[args.optimizers[0]]
    out = args.out or os.path.join(RESULTS_DIR, f"optimizer_compare_{time.strftime('%Y%m%d_%H%M%S')}.json")
    png = os.path.splitext(out)[0] + ".png"
    record = {
        "quick": args.quick,
        "optimizers": args.optimizers,
        "learning_rates": args.learning_rates,
        "steps": args.steps,
        "overrides": dict(o.split("=", 1) for o in args.overrides),
        "tokens_per_step": first["tokens_per_step"],
        "tokens_per_run": first["tokens_per_step"] * args.steps,
        "global_batch": first["global_batch"],
        "max_target_length": first["max_target_length"],
        **{k: first[k] for k in ("num_devices", "device_kind", "platform", "jax_version")},
        "host_cpus": os.cpu_count(),
        "median_step_note": "median of the logged step_time_s, the first logged record left out",
        "opt_state_bytes_note": "sum of x.size * itemsize over abstract_state.opt_state leaves, all devices",
        "run_directory": workdir if args.workdir else None,
        "plot": png if plots else None,
        "results": results,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_record(record, out, "optimizer_compare")
    if plots:
        title = (
            f"{first['params']:,} params, {args.steps} steps x {first['tokens_per_step']:,} tokens, "
            f"{first['num_devices']} x {first['device_kind']}"
        )
        plot(results, png, title)
    print(table(results))
    print(f"wrote {out}" + (f" and {png}" if plots else ""))
    return 0


def main(argv) -> int:
    """Runs the comparison (or, internally, the state size probe)."""
    args = parse_args(argv)
    if args.state_sizes is not None:
        print(_STATE_MARK + json.dumps(state_sizes(json.loads(args.state_sizes))), flush=True)
        return 0
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        workdir = tempfile.mkdtemp(
            prefix=f"optimizer_compare_{time.strftime('%Y%m%d_%H%M%S')}_", dir=args.workdir
        )
        print(f"run directories under {workdir}", flush=True)
        return compare(args, os.path.abspath(workdir))
    with tempfile.TemporaryDirectory(prefix="optimizer_compare_") as workdir:
        return compare(args, workdir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
