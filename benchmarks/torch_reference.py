"""The same reference model trained with PyTorch + Hugging Face transformers (eager), for comparison.

    python3 benchmarks/torch_reference.py [--steps N] [--warmup W] [--attn eager|sdpa] [--out PATH]

LlamaForCausalLM with the shape of train_throughput.py's `--preset reference` (D 256, 4 layers, 4 heads of
64, MLP 1024, vocab 32000, untied head, float32), batch 4 x 256 random tokens, cross entropy over all
256 positions, AdamW (lr 3e-3, betas 0.9/0.95, weight decay 0.1) with global-norm clipping at 1.0: the
work of one MaxText step. Each timed step ends with the optimizer update done (PyTorch CPU is
synchronous). Reports median step time, tokens/s and TFLOP/s with MaxText's analytic FLOPs, and writes
JSON (default benchmarks/results/torch_reference_<timestamp>.json).
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

from results_io import write_record

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = {
    "d": 256,
    "layers": 4,
    "heads": 4,
    "head_dim": 64,
    "mlp": 1024,
    "vocab": 32000,
    "batch": 4,
    "seq": 256,
}


def analytic_flops(shape: dict) -> float:
    """MaxText's formula (MaxText/training/flops.py), written out for this dense causal Llama shape."""
    d, n, h, f, v = shape["d"], shape["heads"], shape["head_dim"], shape["mlp"], shape["vocab"]
    b, t, layers = shape["batch"], shape["seq"], shape["layers"]
    matmul_params = (4 * d * n * h + 3 * d * f) * layers
    tokens = b * t
    return float(6 * matmul_params * tokens + 12 * b * (t * t / 2) * n * h * layers + 6 * tokens * d * v)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument(
        "--attn", choices=("eager", "sdpa"), default="eager", help="HF attention implementation"
    )
    parser.add_argument("--out", default=None, help="JSON output path")
    return parser.parse_args(argv)


def main(argv) -> int:
    """Trains the reference model for warmup + steps steps and writes the timing record."""
    args = parse_args(argv)
    # pylint: disable=import-outside-toplevel
    import torch
    import transformers

    torch.manual_seed(0)
    s = SHAPE
    # transformers' config classes take these through decorated __init__s that pylint cannot read.
    config = transformers.LlamaConfig(  # pylint: disable=unexpected-keyword-arg
        vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["mlp"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["heads"], head_dim=s["head_dim"],
        max_position_embeddings=s["seq"], rms_norm_eps=1e-5, tie_word_embeddings=False,
        attn_implementation=args.attn,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).to(torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)

    def step():
        ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), generator=gen)
        targets = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), generator=gen)
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, s["vocab"]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    times = []
    loss = None
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    tokens = s["batch"] * s["seq"]
    flops = analytic_flops(s)
    result = {
        "framework": f"torch {torch.__version__} + transformers {transformers.__version__} ({args.attn} attention)",
        "torch_threads": torch.get_num_threads(),
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "shape": s,
        "params": sum(p.numel() for p in model.parameters()),
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "step_times_s": times,
        "median_step_s": median,
        "min_step_s": min(times),
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / median,
        "analytic_flops_per_step": flops,
        "tflops_per_device": flops / median / 1e12,
        "final_loss": loss,
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    out = write_record(result, args.out, "torch_reference")
    print(
        f"{result['framework']}, {result['torch_threads']} threads | params {result['params']:,} | "
        f"median {median * 1e3:.1f} ms (min {min(times) * 1e3:.1f}) | tokens/s {tokens / median:,.0f} | "
        f"TFLOP/s {result['tflops_per_device']:.4f} | final loss {loss:.4f}"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
