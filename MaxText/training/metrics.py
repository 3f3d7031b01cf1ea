"""Metrics out: TensorBoard scalars, an appended JSONL file and a compact step line. Process 0 only.

TensorBoard scalars need tensorboardX; without it a run says so in one line and writes metrics.jsonl only.
"""

import json
import os
import sys

import jax

from MaxText.config.errors import ConfigError, require


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def step_line(record: dict, total_steps: int, eta_s: float) -> str:
    """One human-readable line: step, loss (and the MoE load-balance and z-losses), lr (and the steps skipped as
    spikes), grad norm (and, for SFT, the target tokens the loss counted), step time,
    tokens/s, TFLOP/s/device, MFU, ETA."""
    moe = f" (moe_lb {record['moe_lb_loss']:.4f})" if "moe_lb_loss" in record else ""
    z = f" (z_loss {record['z_loss']:.4f})" if "z_loss" in record else ""
    skipped = f" | skipped {record['skipped_steps']}" if "skipped_steps" in record else ""
    trained = f" | trained {record['trained_tokens']:,} tok" if "trained_tokens" in record else ""
    return (
        f"step {record['step']}/{total_steps} | loss {record['loss']:.4f}{moe}{z} | lr {record['lr']:.3e}{skipped} | "
        f"grad_norm {record['grad_norm']:.3f}{trained} | step {record['step_time_s']:.3f}s | "
        f"{record['tokens_per_s']:,.0f} tok/s | {record['tflops_per_device']:.3f} TFLOP/s/dev | "
        f"MFU {100 * record['mfu']:.1f}% | ETA {format_duration(eta_s)}"
    )


class MetricsWriter:
    """Writes `metrics.jsonl` (appended, one object per logged step) and TensorBoard scalars."""

    def __init__(self, run_dir: str):
        self.enabled = jax.process_index() == 0
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        try:
            tensorboard = require("tensorboardX", "writing TensorBoard scalars")
        except ConfigError as e:
            print(f"note: {e}; writing metrics.jsonl only", file=sys.stderr, flush=True)
        else:
            self._tb = tensorboard.SummaryWriter(logdir=os.path.join(run_dir, "tensorboard"))
        path = os.path.join(run_dir, "metrics.jsonl")
        # Held open for the run and appended to line by line; closed in close().
        self._jsonl = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
        if self._jsonl.tell() > 0:  # a kill mid-write may have cut the last line: start ours on a new one
            self._jsonl.seek(self._jsonl.tell() - 1)
            if self._jsonl.read(1) != "\n":
                self._jsonl.write("\n")

    def write(self, record: dict) -> None:
        """record has an int `step` and float values; every other key becomes a scalar."""
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is None:
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, record["step"])
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
