"""Serve a trained model over HTTP with an OpenAI-compatible API.

  python3 -m MaxText.serve configs/base.yml load_parameters_path=DIR [port=8000] [key=value ...]
  python3 -m MaxText.serve configs/base.yml run_name=R [...]

Endpoints: /v1/completions, /v1/chat/completions (stream=true for SSE), /v1/models, /health, /metrics,
/tokenize, /detokenize, /tokenizer_info (docs/serving.md lists the request fields served and refused).
The model id is the run's name (run_name, or the run directory above load_parameters_path), else the
checkpoint directory's name. Requests are batched
continuously by the engine (decode_batch_size slots, kv_cache contiguous|paged); more than max_queue_size
waiting requests get 429; api_key, when set, is required as a Bearer token. SIGTERM stops accepting new
connections, finishes the requests in flight, then exits.
"""

import os
import signal
import sys

from MaxText.config import exit_on_config_error
from MaxText.config.errors import require
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint

# What the HTTP server imports (inference/server.py, input_pipeline/chat_template.py), checked first.
SERVER_PACKAGES = ("fastapi", "pydantic", "uvicorn", "prometheus_client", "jinja2")


def model_id(path: str) -> str:
    """The run directory's name for .../<run>/checkpoints/<step> (and a run directory), else the checkpoint
    directory's own name."""
    parts = os.path.abspath(path).rstrip(os.sep).split(os.sep)
    if parts[-1].isdigit() and len(parts) > 1:
        parts = parts[:-1]
    if parts[-1] == "checkpoints" and len(parts) > 1:
        parts = parts[:-1]
    return parts[-1]


@exit_on_config_error
def main(argv) -> int:
    """Loads the checkpoint, compiles every prefill bucket and the decode step, then serves until SIGTERM."""
    for name in SERVER_PACKAGES:
        require(name, "MaxText.serve")
    cfg, path = load_config_from_checkpoint(argv, require_checkpoint=True)
    # pylint: disable=import-outside-toplevel
    import uvicorn

    from MaxText.inference import server, session
    from MaxText.input_pipeline.chat_template import load_chat_template

    decoder = session.DecodeSession.from_checkpoint(cfg, path)
    compile_s = decoder.warmup()
    template = load_chat_template(cfg.chat_template, cfg.tokenizer_path)
    service = server.Service(decoder, model_id(path), template)
    app = server.make_app(service)
    print(
        f"serving {service.model_id!r} on http://{cfg.serve_host}:{cfg.port} | {cfg.decode_batch_size} slots, "
        f"{cfg.kv_cache} KV cache, context {cfg.max_target_length} | compiled in {compile_s:.1f}s",
        flush=True,
    )
    # uvicorn drains on SIGTERM, restores the previous handler and re-raises the signal; a no-op handler
    # there lets a drained server exit 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=cfg.serve_host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=None)
    print("server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
