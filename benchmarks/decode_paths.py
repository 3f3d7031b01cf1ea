"""Decode speed of the three entry paths on one model: api.load(...).generate, MaxText.decode's
DecodeSession.generate_text, and MaxText.serve over HTTP.

    python3 /path/to/benchmarks/decode_paths.py [key=value ...] [--batch 4] [--prompt 32] [--new 64]
        [--repeats 5] [--precision default] [--quick] [--out PATH]

Measures the tree in the current directory when it holds MaxText/ (so one copy of this script times two
trees: `cd /tmp/before && python3 /work/main/benchmarks/decode_paths.py --out before.json`), else the tree
this script lies in. It uses only what both older and newer trees have: api.load/generate, DecodeSession
(from_checkpoint, encode_prompt, generate_text) and the server's /v1/completions.

The model is base.yml's (D 256, 4 layers, 4 heads of 64, MLP 1024, vocab 4096 = the built-in SentencePiece
tokenizer's, so every generated id decodes to text) with key=value overrides, random weights (seed 0)
saved to a temporary checkpoint with the repo's Checkpointer, as a training run saves them. Prompts:
`batch` windows of the built-in Shakespeare text, each encoding to exactly `prompt` ids (BOS included), the
same texts on every path. Greedy; requests stop at EOS as each path does by default.

Per path, after a warm-up that compiles everything (and excluded from the timings), `repeats` times each of
  run(1):   the batch's prompts with 1 new token    -> ttft_ms (best): every prompt has its first token;
  run(new): the batch's prompts with `new` tokens   -> e2e_tokens_per_s (best) = tokens / wall time;
  decode_tokens_per_s = (tokens(new) - tokens(1)) / (wall(new) - wall(1)), from the best walls.
  api:     model.generate(ids [batch, prompt], n) (one call, ids from model.tokenizer.encode);
  session: generate_text(texts) with max_decode_steps=n (its warm-up inside the call is subtracted:
           the compile_s it adds);
  server:  `python3 -m MaxText.serve` in a subprocess (warmed up as it starts), `batch` concurrent POST
           /v1/completions {"prompt", "max_tokens": n, "temperature": 0} over HTTP; tokens = usage.
Every path gets decode_batch_size = batch, max_target_length = prompt + new, matmul_precision
(--precision), a contiguous KV cache unless key=value says otherwise. tokens_agree says whether api and
session produced the same greedy tokens and the server the same texts and counts.
"""

import argparse
import concurrent.futures
import gzip
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

from results_io import write_record

SCRIPT_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv):
    """The benchmark's options and key=value overrides (model and decode keys alike)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (every path)")
    parser.add_argument("--batch", type=int, default=4, help="prompts per run = decode slots (default 4)")
    parser.add_argument("--prompt", type=int, default=32, help="ids per prompt, BOS included (default 32)")
    parser.add_argument("--new", type=int, default=64, help="new tokens per prompt (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats, best kept (default 5)")
    parser.add_argument("--precision", default="default", help="matmul_precision for every path")
    parser.add_argument("--quick", action="store_true", help="batch 2, prompt 16, new 8, 1 repeat")
    parser.add_argument("--tree", default=None, help="the tree to measure (default: see the docstring)")
    parser.add_argument("--out", default=None, help="JSON output path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.prompt, args.new, args.repeats = 2, 16, 8, 1
    if args.tree is None:
        args.tree = os.getcwd() if os.path.isdir(os.path.join(os.getcwd(), "MaxText")) else SCRIPT_TREE
    args.tree = os.path.abspath(args.tree)
    return args


def _set_environment() -> None:
    """One CPU device unless XLA_FLAGS says otherwise; must run before JAX is imported."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=1".strip()


def write_checkpoint(args, workdir: str) -> str:
    """Random weights of base.yml + overrides saved as a run's step 1; returns the step directory."""
    # pylint: disable=import-outside-toplevel
    import flax.linen as nn
    import jax

    from MaxText.checkpoint import checkpointing
    from MaxText.config import load_config, model_config
    from MaxText.models.transformer import init_params_boxed, make_model

    cfg = load_config([os.path.join(args.tree, "configs", "base.yml"), *args.overrides])
    params = nn.unbox(init_params_boxed(make_model(model_config(cfg)), jax.random.key(0)))
    writer = checkpointing.Checkpointer(os.path.join(workdir, "ckpt"), 1, False)
    writer.save(1, {"params": params}, {}, {"config": checkpointing.config_dict(cfg)})
    writer.close()
    return os.path.join(workdir, "ckpt", "1")


def make_prompts(encode, args) -> list:
    """`batch` distinct Shakespeare windows whose encoding (BOS included) is exactly `prompt` ids."""
    with gzip.open(os.path.join(args.tree, "assets", "shakespeare", "shakespeare.txt.gz"), "rt") as f:
        words = f.read(400_000).split()
    prompts, start = [], 1000
    while len(prompts) < args.batch:
        text, end = "", start
        while len(encode(text)) < args.prompt and end < len(words):
            text = " ".join(words[start : end + 1])
            end += 1
        if len(encode(text)) == args.prompt:
            prompts.append(text)
            start = end + 50
        else:
            start += 1
    return prompts


def _best(run, args) -> dict:
    """Times run(1) and run(new) `repeats` times each (after one warm-up of each); best walls."""
    for n in (1, args.new):
        run(n)
    first = min((run(1) for _ in range(args.repeats)), key=lambda r: r[0])
    full = min((run(args.new) for _ in range(args.repeats)), key=lambda r: r[0])
    return {
        "ttft_ms": round(first[0] * 1e3, 2),
        "e2e_tokens_per_s": round(full[1] / full[0], 1),
        "decode_tokens_per_s": round((full[1] - first[1]) / max(full[0] - first[0], 1e-9), 1),
        "wall_s": round(full[0], 4),
        "generated_tokens": full[1],
        "outputs": full[2],
    }


def _decode_keys(args, ckpt: str) -> list:
    return [
        f"load_parameters_path={ckpt}", "decode_sampling_strategy=greedy", f"decode_batch_size={args.batch}",
        f"max_target_length={args.prompt + args.new}", f"max_prefill_predict_length={args.prompt}",
        f"max_decode_steps={args.new}", f"matmul_precision={args.precision}", *args.overrides,
    ]  # fmt: skip


def load_api(args, ckpt: str):
    """(api.load(ckpt, ...), seconds it took)."""
    from MaxText import api  # pylint: disable=import-outside-toplevel

    t0 = time.perf_counter()
    model = api.load(ckpt, matmul_precision=args.precision, **dict(o.split("=", 1) for o in args.overrides))
    return model, time.perf_counter() - t0


def measure_api(args, model, load_s: float, prompts: list) -> dict:
    """model.generate on the batch of prompt ids (model.tokenizer.encode)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    ids = np.asarray([model.tokenizer.encode(p) for p in prompts], np.int32)
    eos = model.eos_id

    def run(n):
        t = time.perf_counter()
        out = model.generate(ids, n)
        wall = time.perf_counter() - t
        rows = [row[args.prompt :].tolist() for row in out]
        rows = [row[: row.index(eos)] if eos in row else row for row in rows]
        return wall, sum(len(r) for r in rows), rows

    t0 = time.perf_counter()
    result = _best(run, args)
    result["load_s"], result["measure_s"] = round(load_s, 2), round(time.perf_counter() - t0, 2)
    return result


def measure_session(args, ckpt: str, prompts: list) -> dict:
    """DecodeSession.from_checkpoint + generate_text, as MaxText.decode runs them."""
    # pylint: disable=import-outside-toplevel
    from MaxText.checkpoint.config_overlay import load_config_from_checkpoint
    from MaxText.inference.session import DecodeSession

    t0 = time.perf_counter()
    argv = [os.path.join(args.tree, "configs", "base.yml"), *_decode_keys(args, ckpt)]
    cfg, path = load_config_from_checkpoint(argv, require_checkpoint=True)
    session = DecodeSession.from_checkpoint(cfg, path)
    lengths = {len(session.encode_prompt(p)) for p in prompts}
    assert lengths == {
        args.prompt
    }, f"the session encodes the prompts to {lengths} ids, expected {args.prompt}"
    session.warmup()
    load_s = time.perf_counter() - t0

    def run(n):
        session.cfg = cfg.replace(max_decode_steps=n)
        compile_before = session.compile_s
        t = time.perf_counter()
        out = session.generate_text(prompts)
        wall = time.perf_counter() - t - (out["compile_s"] - compile_before)
        return wall, out["generated_tokens"], out["tokens"]

    t0 = time.perf_counter()
    result = _best(run, args)
    result["load_s"], result["measure_s"] = round(load_s, 2), round(time.perf_counter() - t0, 2)
    result["texts"] = [session.tokenizer.decode(t) for t in result["outputs"]]
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_server(args, ckpt: str, prompts: list) -> dict:  # pylint: disable=too-many-locals
    """`python3 -m MaxText.serve` in a subprocess; `batch` concurrent HTTP completions per run."""
    import httpx  # pylint: disable=import-outside-toplevel

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "MaxText.serve", os.path.join(args.tree, "configs", "base.yml"),
           *_decode_keys(args, ckpt), f"port={port}", f"max_queue_size={max(64, args.batch)}"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=args.tree)
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryFile() as log,
        subprocess.Popen(cmd, cwd=args.tree, env=env, stdout=log, stderr=subprocess.STDOUT) as proc,
    ):
        try:
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(
                        f"the server exited ({proc.returncode}):\n{log.read().decode()[-3000:]}"
                    )
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.5)
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError("the server did not come up in 600 s")
            load_s = time.perf_counter() - t0
            with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=args.batch + 4)) as client:

                def complete(text, n):
                    body = {"prompt": text, "max_tokens": n, "temperature": 0}
                    reply = client.post(f"{url}/v1/completions", json=body)
                    reply.raise_for_status()
                    data = reply.json()
                    return data["choices"][0]["text"], data["usage"]["completion_tokens"]

                with concurrent.futures.ThreadPoolExecutor(args.batch) as pool:

                    def run(n):
                        t = time.perf_counter()
                        replies = list(pool.map(lambda text: complete(text, n), prompts))
                        wall = time.perf_counter() - t
                        return wall, sum(c for _, c in replies), replies

                    t0 = time.perf_counter()
                    result = _best(run, args)
                    measure_s = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    result["load_s"], result["measure_s"] = round(load_s, 2), round(measure_s, 2)
    return result


def run_all(args) -> dict:
    """Checkpoint, prompts, then the three paths one after the other; returns the JSON record."""
    # pylint: disable=import-outside-toplevel
    import jax

    import MaxText

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        ckpt = write_checkpoint(args, workdir)
        model, load_s = load_api(args, ckpt)
        prompts = make_prompts(model.tokenizer.encode, args)
        paths = {"api": measure_api(args, model, load_s, prompts)}
        del model
        paths["session"] = measure_session(args, ckpt, prompts)
        paths["server"] = measure_server(args, ckpt, prompts)
    api_rows, session_rows = paths["api"].pop("outputs"), paths["session"].pop("outputs")
    server_rows = paths["server"].pop("outputs")
    texts = paths["session"].pop("texts")
    agree = {
        "api_vs_session_tokens": api_rows == session_rows,
        "server_vs_session_texts": [t for t, _ in server_rows] == texts,
        "server_vs_session_counts": [c for _, c in server_rows] == [len(r) for r in session_rows],
    }
    commit = subprocess.run(
        ["git", "-C", args.tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "benchmark": "decode_paths",
        "tree": args.tree,
        "maxtext_module": os.path.dirname(MaxText.__file__),
        "git_head": commit,
        "overrides": dict(o.split("=", 1) for o in args.overrides),
        "batch": args.batch,
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "repeats": args.repeats,
        "matmul_precision": args.precision,
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        # The 1-minute load average before and after: the numbers mean little when it exceeds the CPUs.
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "jax": jax.__version__,
        "paths": paths,
        "tokens_agree": agree,
        "first_tokens": session_rows[0][:8],
    }


def summary(r: dict) -> str:
    """The record as a table, one row per path."""
    lines = [
        f"decode paths: {r['tree']} ({r['git_head']}), batch {r['batch']}, prompt {r['prompt_tokens']}, "
        f"{r['new_tokens']} new, device {r['device']}",
        f"{'path':<10}{'TTFT ms':>10}{'decode tok/s':>14}{'e2e tok/s':>11}{'tokens':>8}{'load s':>8}",
    ]
    for name, row in r["paths"].items():
        lines.append(
            f"{name:<10}{row['ttft_ms']:>10.1f}{row['decode_tokens_per_s']:>14,.1f}"
            f"{row['e2e_tokens_per_s']:>11,.1f}{row['generated_tokens']:>8}{row['load_s']:>8.1f}"
        )
    lines.append(f"tokens agree: {r['tokens_agree']}")
    return "\n".join(lines)


def main(argv) -> int:
    """Parses, measures, prints the table and writes the JSON record."""
    args = parse_args(argv)
    _set_environment()
    sys.path.insert(0, args.tree)
    result = run_all(args)
    print(summary(result))
    print(f"wrote {write_record(result, args.out, 'decode_paths')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
