"""Runs benchmark commands round-robin and summarises them: the fair way to compare on a shared machine.

    python3 benchmarks/interleave.py --rounds 4 [--out PATH] \\
        "after: python3 benchmarks/train_throughput.py --preset reference --steps 15" \\
        "torch: python3 benchmarks/torch_reference.py --steps 15"

Each variant is "NAME: COMMAND"; the command must accept --out PATH and write a train_throughput.py or
torch_reference.py JSON there. Rounds run A, B, C, A, B, C, ... so a burst of load from other processes
hits every variant alike. Per variant it reports the median over rounds of each run's median step time
(and tokens/s, TFLOP/s/device and MFU from it), the spread of the run medians, and writes every run's
record plus the summary to benchmarks/results/interleave_<timestamp>.json unless --out says otherwise.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from results_io import write_record

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_variant(text: str):
    name, sep, command = text.partition(":")
    if not sep or not name.strip() or not command.strip():
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected 'NAME: COMMAND'")
    return name.strip(), shlex.split(command)


def summarise(runs: list) -> dict:
    """Median over runs of each run's median step time, and the figures derived from it."""
    medians = [r["median_step_s"] for r in runs]
    step = statistics.median(medians)
    first = runs[0]
    out = {
        "runs": len(runs),
        "median_step_s": step,
        "run_median_step_s": medians,
        "spread_pct": 100 * (max(medians) - min(medians)) / step,
        "tokens_per_s": first["tokens_per_step"] / step,
        "tflops_per_device": first["analytic_flops_per_step"] / step / first.get("num_devices", 1) / 1e12,
    }
    if "peak_tflops_per_device" in first:
        peaks = [r["peak_tflops_per_device"] for r in runs]
        out["peak_tflops_per_device"] = statistics.median(peaks)
        out["peak_source"] = first["peak_source"]
        out["mfu"] = out["tflops_per_device"] / out["peak_tflops_per_device"]
        out["mfu_per_run"] = [r["mfu"] for r in runs]
    if "median_step_cpu_s" in first:
        out["median_step_cpu_s"] = statistics.median(r["median_step_cpu_s"] for r in runs)
    return out


def main(argv) -> int:
    """Runs the variants round-robin, then prints and writes the summary."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="+", type=parse_variant, help="'NAME: COMMAND' (several)")
    parser.add_argument("--rounds", type=int, default=3, help="times each variant runs (default 3)")
    parser.add_argument("--out", default=None, help="summary JSON path")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.variants]
    if len(set(names)) != len(names):
        parser.error(f"variant names must differ: {names}")
    runs = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, command) in enumerate(args.variants):
                path = os.path.join(tmp, f"{i}_{r}.json")
                proc = subprocess.run(
                    command + ["--out", path], cwd=REPO_ROOT, capture_output=True, text=True, check=False
                )
                if proc.returncode != 0:
                    print(proc.stdout[-2000:] + proc.stderr[-2000:], file=sys.stderr)
                    print(
                        f"variant {name!r} failed (exit {proc.returncode}): {shlex.join(command)}",
                        file=sys.stderr,
                    )
                    return 1
                with open(path, encoding="utf-8") as f:
                    runs[name].append(json.load(f))
                print(
                    f"round {r + 1}/{args.rounds} {name}: {runs[name][-1]['median_step_s'] * 1e3:.0f} ms/step"
                )
    summary = {name: summarise(runs[name]) for name in names}
    record = {
        "rounds": args.rounds,
        "commands": {name: shlex.join(command) for name, command in args.variants},
        "summary": summary,
        "runs": runs,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = write_record(record, args.out, "interleave")
    print(f"{'variant':24s} {'step ms':>8s} {'spread':>7s} {'tokens/s':>9s} {'TFLOP/s/dev':>11s} {'MFU':>6s}")
    for name, s in summary.items():
        mfu = f"{100 * s['mfu']:5.1f}%" if "mfu" in s else "   n/a"
        print(
            f"{name:24s} {s['median_step_s'] * 1e3:8.1f} {s['spread_pct']:6.0f}% {s['tokens_per_s']:9,.0f} "
            f"{s['tflops_per_device']:11.4f} {mfu}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
