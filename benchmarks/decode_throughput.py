"""Decode throughput of the serving engine, contiguous and paged KV caches, against Hugging Face generate.

    python3 benchmarks/decode_throughput.py [configs/base.yml] [key=value ...] [--preset reference]
        [--batches 1,4,8,32] [--quant ,int8w,int8] [--prompt 64] [--new 64] [--repeats 3] [--no-hf]
        [--out PATH]

For each weight quantization (--quant: "" float32, int8w, int8), cache layout and batch size B, an Engine with B slots (the fixed decode batch) serves B requests
of `prompt` random tokens and `new` greedy tokens each (ignore_eos), after a warm-up that compiles
everything. Measured (wall clock, best of --repeats):
  prefill_ms: one request's prefill (batch 1, prompt bucket = prompt length) to its first token on the host;
  ttft_ms:    mean time to first token over the B requests submitted together (they prefill one by one);
  decode_tokens_per_s: B x steps / time of `steps` decode steps with all B slots active (host sync per
              step included, as the server does);
  end_to_end_tokens_per_s: B x new / wall time from submission to the last token.
Quantized rows serve int8 weights as a quantized checkpoint holds them (checkpoint_is_quantized: int8
kernels + scales in memory, conversion/quantize.py), so decode reads a quarter of the weight bytes.

Hugging Face: the same weights exported with `maxtext_to_hf` (a checkpoint of the params written to a temp
dir, then the exporter), loaded with LlamaForCausalLM.from_pretrained (torch CPU, float32) in a separate
process, so neither framework's idle worker threads spin on the cores the other is timing. torch uses
one thread per available core. model.generate(greedy, use_cache, B prompts, an all-ones attention mask,
pad token 0, no EOS, min_new_tokens = max_new_tokens so every run really decodes `new` tokens), after two
warm-up calls; ttft = generate(max_new_tokens=1), decode tokens/s = B x (new - 1) / (full - ttft). Its
first greedy tokens are compared with the float rows' (tokens_match_hf); quantized rows report whether they
match the float row (tokens_match_float).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from results_io import publish
from train_throughput import DEFAULT_CONFIG, PRESETS, REPO_ROOT, overrides_dict, set_environment


def parse_args(argv):
    """The command line: config path and key=value overrides, plus the benchmark's own options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default=None, help="YAML config (default configs/base.yml)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (after the preset's)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a named set of overrides")
    parser.add_argument("--batches", default="1,4,8,32", help="decode batch sizes (default 1,4,8,32)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per request (default 64)")
    parser.add_argument("--new", type=int, default=64, help="new tokens per request (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default 3)")
    parser.add_argument("--page-size", type=int, default=16, help="paged cache page size (default 16)")
    parser.add_argument("--quant", default=",int8w,int8", help="weight quantizations ('' = float32)")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face comparison")
    parser.add_argument("--hf-dir", default=None, help=argparse.SUPPRESS)  # internal: the HF child process
    parser.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/...)")
    args = parser.parse_intermixed_args(argv)
    if args.config is not None and "=" in args.config:
        args.overrides = [args.config] + args.overrides
        args.config = None
    args.config = args.config or DEFAULT_CONFIG
    args.batches = [int(b) for b in args.batches.split(",")]
    args.quant = args.quant.split(",")
    return args


def _prompts(batch, length, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=length).tolist() for _ in range(batch)]


def _collector(tokens: list):
    return lambda event: tokens.append(event.token)


def measure_engine(model, params, args, batch: int, paged: bool) -> dict:  # pylint: disable=too-many-locals
    """Times one Engine configuration (see the module docstring)."""
    # pylint: disable=import-outside-toplevel
    from MaxText.inference.batcher import Batcher, Request
    from MaxText.inference.engine import Engine, EngineConfig

    config = EngineConfig(
        batch, args.prompt + args.new, (args.prompt,), paged=paged, page_size=args.page_size
    )
    engine = Engine(model, params, config)
    batcher = Batcher(engine, eos_id=-1)
    t0 = time.perf_counter()
    batcher.warmup()
    compile_s = time.perf_counter() - t0
    prompts = _prompts(batch, args.prompt, model.config.vocab_size)
    prefill_ms, ttft_ms, decode_tps, e2e_tps, tokens = [], [], [], [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        int(engine.prefill(prompts[0], args.new).first_token)
        prefill_ms.append((time.perf_counter() - t0) * 1e3)
        out = [[] for _ in prompts]
        for p, tokens_of in zip(prompts, out):
            batcher.submit(Request(p, args.new, ignore_eos=True, on_event=_collector(tokens_of)))
        start = time.perf_counter()
        batcher.step()  # admits (prefills) all B requests, then one decode step
        ttft_ms.append(statistics.mean(list(batcher.first_token_s)[-batch:]) * 1e3)
        steps = args.new - 2
        t0 = time.perf_counter()
        for _ in range(steps):
            batcher.step()
        decode_tps.append(batch * steps / (time.perf_counter() - t0))
        batcher.run_until_idle()
        e2e_tps.append(batch * args.new / (time.perf_counter() - start))
        tokens = out
    assert all(len(t) == args.new for t in tokens), "every request must produce `new` tokens"
    return {
        "quantization": model.config.quantization,
        "cache": "paged" if paged else "contiguous",
        "batch": batch,
        "compile_s": round(compile_s, 2),
        "prefill_ms": round(min(prefill_ms), 2),
        "ttft_ms": round(min(ttft_ms), 2),
        "decode_tokens_per_s": round(max(decode_tps), 1),
        "end_to_end_tokens_per_s": round(max(e2e_tps), 1),
        "first_tokens": tokens[0][:8],
    }


def export_hf(cfg, params, workdir: str) -> str:
    """Writes params as a MaxText checkpoint, then exports it with maxtext_to_hf; returns the HF dir."""
    # pylint: disable=import-outside-toplevel
    from MaxText.conversion import maxtext_to_hf
    from MaxText.checkpoint import checkpointing

    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "ckpt"), 1, async_save=False)
    ckpt.save(0, {"params": params}, {}, {"config": checkpointing.config_dict(cfg)})
    ckpt.close()
    hf_dir = os.path.join(workdir, "hf")
    maxtext_to_hf.export(os.path.join(workdir, "ckpt"), hf_dir, log=lambda *_: None)
    return hf_dir


def measure_hf(hf_dir: str, args, batch: int) -> dict:
    """Times transformers' generate on the exported weights (see the module docstring). No JAX here."""
    # pylint: disable=import-outside-toplevel
    import torch
    import transformers

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        vocab = json.load(f)["vocab_size"]
    ids = torch.tensor(_prompts(batch, args.prompt, vocab))
    kwargs = dict(
        attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True, pad_token_id=0,
        eos_token_id=None,
    )  # fmt: skip

    def run(new):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=new, min_new_tokens=new, **kwargs)
        elapsed = time.perf_counter() - t0
        assert out.shape[1] == args.prompt + new, "generate must decode exactly `new` tokens"
        return elapsed, out

    for new in (2, args.new):  # warm-up: allocator, kernels, the cache at full length
        run(new)
    first = min(run(1)[0] for _ in range(args.repeats))
    full, out = min((run(args.new) for _ in range(args.repeats)), key=lambda r: r[0])
    return {
        "batch": batch,
        "ttft_ms": round(first * 1e3, 2),
        "decode_tokens_per_s": round(batch * (args.new - 1) / max(full - first, 1e-9), 1),
        "end_to_end_tokens_per_s": round(batch * args.new / full, 1),
        "first_tokens": out[0, args.prompt : args.prompt + 8].tolist(),
        "torch_threads": torch.get_num_threads(),
        "attn_implementation": hf.config._attn_implementation,  # pylint: disable=protected-access
    }


def hf_rows_in_child(hf_dir: str, args) -> list:
    """Runs measure_hf for every batch in a fresh process (this script with --hf-dir)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "hf.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--hf-dir", hf_dir, "--out", out,
               "--batches", ",".join(map(str, args.batches)), "--prompt", str(args.prompt),
               "--new", str(args.new), "--repeats", str(args.repeats)]  # fmt: skip
        subprocess.run(cmd, check=True)
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def quantized_params(model_cfg, params, mode: str):
    """(model, params) serving `mode`: int8 kernels + scales in memory, as a quantized checkpoint loads."""
    # pylint: disable=import-outside-toplevel
    import flax.linen as nn
    import jax

    from MaxText.layers.quantizations import quantize_params
    from MaxText.models.transformer import init_params_boxed, make_model

    model = make_model(model_cfg.replace(quantization=mode, checkpoint_is_quantized=bool(mode)))
    if not mode:
        return model, params
    target = nn.unbox(jax.eval_shape(lambda: init_params_boxed(model, jax.random.key(0))))
    return model, jax.jit(lambda p: quantize_params(p, target))(params)


def _compare(rows, hf_rows):
    """Adds speedup_vs_hf_decode and token agreement (with HF for float rows, else with the float row)."""
    for row in rows:
        hf_row = next((h for h in hf_rows if h["batch"] == row["batch"]), None)
        if hf_row:
            row["speedup_vs_hf_decode"] = round(row["decode_tokens_per_s"] / hf_row["decode_tokens_per_s"], 2)
        if not row["quantization"]:
            if hf_row:
                row["tokens_match_hf"] = row["first_tokens"] == hf_row["first_tokens"]
            continue
        float_row = next(
            (
                f
                for f in rows
                if not f["quantization"] and (f["cache"], f["batch"]) == (row["cache"], row["batch"])
            ),
            None,
        )
        if float_row:
            row["tokens_match_float"] = row["first_tokens"] == float_row["first_tokens"]


def run_all(args, cfg) -> dict:
    """Random-initialised model of cfg; every engine row, then Hugging Face; returns the JSON record."""
    # pylint: disable=import-outside-toplevel
    import flax.linen as nn
    import jax

    from MaxText.config import model_config
    from MaxText.models.transformer import init_params_boxed, make_model

    load_before = os.getloadavg()
    model_cfg = model_config(cfg)
    model = make_model(model_cfg)
    params = nn.unbox(init_params_boxed(model, jax.random.key(0)))
    rows = []
    for mode in args.quant:
        q_model, q_params = quantized_params(model_cfg, params, mode)
        rows += [
            measure_engine(q_model, q_params, args, b, paged) for paged in (False, True) for b in args.batches
        ]
        del q_params
    hf_rows = []
    if not args.no_hf:
        with tempfile.TemporaryDirectory() as workdir:
            hf_rows = hf_rows_in_child(export_hf(cfg, params, workdir), args)
    _compare(rows, hf_rows)
    return {
        "benchmark": "decode_throughput",
        "preset": args.preset,
        "overrides": overrides_dict((list(PRESETS[args.preset]) if args.preset else []) + args.overrides),
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "repeats": args.repeats,
        "page_size": args.page_size,
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        # The machine's 1-minute load average before and after: the numbers mean little when it exceeds
        # the CPU count (other jobs took the cores).
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "jax": jax.__version__,
        "maxtext": rows,
        "huggingface": hf_rows,
    }


def summary(r: dict) -> str:
    """The record as a table (one row per implementation and batch size)."""
    lines = [f"decode: prompt {r['prompt_tokens']}, {r['new_tokens']} new tokens, device {r['device']}"]
    lines.append(
        f"{'impl':<22}{'B':>4}{'prefill ms':>12}{'TTFT ms':>10}{'decode tok/s':>14}{'e2e tok/s':>11}{'vs HF':>7}"
    )
    for row in r["maxtext"]:
        name = f"maxtext {row['cache']} {row['quantization'] or 'f32'}"
        lines.append(
            f"{name:<22}{row['batch']:>4}{row['prefill_ms']:>12.1f}{row['ttft_ms']:>10.1f}"
            f"{row['decode_tokens_per_s']:>14,.0f}{row['end_to_end_tokens_per_s']:>11,.0f}"
            f"{row.get('speedup_vs_hf_decode', float('nan')):>7.2f}"
        )
    for row in r["huggingface"]:
        lines.append(
            f"{'hf transformers':<22}{row['batch']:>4}{'':>12}{row['ttft_ms']:>10.1f}"
            f"{row['decode_tokens_per_s']:>14,.0f}{row['end_to_end_tokens_per_s']:>11,.0f}"
        )
    return "\n".join(lines)


def main(argv) -> int:
    """Parses, measures, prints the table and writes the JSON record."""
    args = parse_args(argv)
    if args.hf_dir:  # the Hugging Face child process: torch only
        rows = [measure_hf(args.hf_dir, args, b) for b in args.batches]
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f)
        return 0
    set_environment("")
    sys.path.insert(0, REPO_ROOT)
    from MaxText.config import exit_on_config_error, load_config  # pylint: disable=import-outside-toplevel

    preset = list(PRESETS[args.preset]) if args.preset else []
    length = f"max_target_length={args.prompt + args.new}"
    cfg = exit_on_config_error(load_config)([args.config] + preset + [length] + list(args.overrides))
    result = run_all(args, cfg)
    publish(result, args, "decode_throughput", summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
