"""MoE layer throughput: the dropless ragged_dot path and the capacity path against a dense per-expert loop.

    python3 benchmarks/moe_throughput.py [--tokens 4096] [--dim 512] [--expert-dim 1024] [--experts 8]
        [--top-k 2] [--repeats 10] [--backward] [--out PATH]

Every variant computes sum_k w[n, k] expert_{e[n, k]}(x[n]) for the same router output:
  dropless   MaxText.layers.moe.dropless_experts: sort the N x K assignments by expert, jax.lax.ragged_dot
  capacity   MaxText.layers.moe.capacity_experts at capacity_factor 1.25 (drops overflow)
  dense_loop every expert on every token, weighted by its routing weight (E / K times the useful work)
Timing: best and median of --repeats calls of the jitted function after one warm-up call (compile excluded);
with --backward, value and gradient with respect to the input and the expert weights. tokens/s = N / median.
Writes a JSON record to benchmarks/results/moe_throughput_<timestamp>.json unless --out says otherwise.
"""

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from results_io import write_record

from MaxText.layers import moe
from MaxText.layers.linears import ACTIVATIONS

ACTS = ("silu", "linear")


def dense_loop(x, weights, experts, wi, wo):
    """Every expert on every token, masked by the routing weights (the per-expert reference loop)."""
    out = jnp.zeros_like(x)
    for e in range(wo.shape[0]):
        w = jnp.sum(jnp.where(experts == e, weights, 0.0), axis=-1)
        h = ACTIVATIONS[ACTS[0]](x @ wi[0][e]) * (x @ wi[1][e])
        out = out + w[:, None] * (h @ wo[e])
    return out


def variants(capacity_factor: float) -> dict:
    return {
        "dropless": lambda x, w, e, wi, wo: moe.dropless_experts(x, w, e, wi, wo, ACTS),
        "capacity": lambda x, w, e, wi, wo: moe.capacity_experts(x, w, e, wi, wo, ACTS, capacity_factor),
        "dense_loop": dense_loop,
    }


def inputs(args):
    k = jax.random.split(jax.random.key(0), 5)
    n, d, f, e = args.tokens, args.dim, args.expert_dim, args.experts
    x = jax.random.normal(k[0], (n, d), jnp.float32)
    wi = [jax.random.normal(k[i + 1], (e, d, f), jnp.float32) * d**-0.5 for i in range(2)]
    wo = jax.random.normal(k[3], (e, f, d), jnp.float32) * f**-0.5
    logits = x @ jax.random.normal(k[4], (d, e), jnp.float32)
    weights, chosen, _ = moe.route(logits, moe.RoutingConfig(e, args.top_k, norm_topk_prob=True))
    return x, weights, chosen, wi, wo


def time_fn(fn, operands, repeats: int) -> list:
    jax.block_until_ready(fn(*operands))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*operands))
        times.append(time.perf_counter() - t0)
    return times


def build(fn, backward: bool):
    if not backward:
        return jax.jit(fn)

    def loss(x, w, e, wi, wo):
        return jnp.sum(fn(x, w, e, wi, wo) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 3, 4)))


def main(argv) -> int:  # pylint: disable=missing-function-docstring
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--expert-dim", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--backward", action="store_true", help="time value and gradient, not just forward")
    parser.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    operands = inputs(args)
    results = {}
    for name, fn in variants(args.capacity_factor).items():
        times = time_fn(build(fn, args.backward), operands, args.repeats)
        median = statistics.median(times)
        results[name] = {
            "median_s": median,
            "best_s": min(times),
            "tokens_per_s": args.tokens / median,
        }
        print(f"{name:>10}: {args.tokens / median:>12,.0f} tokens/s (median {1e3 * median:.2f} ms)")
    speedup = results["dense_loop"]["median_s"] / results["dropless"]["median_s"]
    print(f"dropless vs dense per-expert loop: {speedup:.2f}x")
    record = {
        "benchmark": "moe_throughput",
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
        "dropless_speedup_vs_dense_loop": speedup,
    }
    path = write_record(record, args.out, "moe_throughput")
    print(f"wrote {path}")
    print(json.dumps({k: round(v["tokens_per_s"]) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
