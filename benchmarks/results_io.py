"""Where benchmark records go: one JSON file per run under benchmarks/results/ unless --out names one."""

import json
import os
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_record(record: dict, out: str | None, prefix: str) -> str:
    """Writes `record` to `out`, or to results/<prefix>_<timestamp>.json; returns the path."""
    out = out or os.path.join(RESULTS_DIR, f"{prefix}_{time.strftime('%Y%m%d_%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return out


def publish(record: dict, args, kind: str, summary: str) -> str:
    """Writes a config-driven benchmark's record (named after --preset or the config file), prints its
    summary and the path; returns the path."""
    name = args.preset or os.path.splitext(os.path.basename(args.config))[0]
    out = write_record(record, args.out, f"{kind}_{name}")
    print(summary)
    print(f"wrote {out}")
    return out
