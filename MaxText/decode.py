"""Generate text from a trained run or a checkpoint.

  python3 -m MaxText.decode configs/base.yml run_name=R [prompt="ROMEO:|JULIET:"] [key=value ...]
  python3 -m MaxText.decode configs/base.yml load_parameters_path=DIR [...]

The model keys and the tokenizer come from the checkpoint's saved config (the command line still wins).
Prints each prompt's continuation, the time to first token and decode tokens/s.
"""

import os
import sys

from MaxText.config import ConfigError, exit_on_config_error, load_config, run_dir
from MaxText.config.derived import MODEL_KEYS


def checkpoint_path(cfg) -> str:
    """load_parameters_path if given, else the run directory of run_name (which must hold a checkpoint)."""
    path = cfg.load_parameters_path or run_dir(cfg)
    if not os.path.exists(path):
        key = "load_parameters_path" if cfg.load_parameters_path else "run_name"
        value = cfg.load_parameters_path or cfg.run_name
        raise ConfigError(
            f"{key}={value!r}: no checkpoint at {path}; train first or give load_parameters_path"
        )
    return path


def load_decode_config(argv):
    """(config with the checkpoint's model keys applied, checkpoint path)."""
    from MaxText.training import checkpointing  # pylint: disable=import-outside-toplevel

    first = load_config(argv)
    path = checkpoint_path(first)
    try:
        saved = checkpointing.read_meta(path).get("config", {})
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    return load_config(argv, overlay={k: saved[k] for k in MODEL_KEYS if k in saved}), path


@exit_on_config_error
def main(argv) -> int:
    """Loads the checkpoint, generates for each prompt and prints texts and timings."""
    cfg, path = load_decode_config(argv)
    from MaxText.inference import session  # pylint: disable=import-outside-toplevel

    decoder = session.DecodeSession.from_checkpoint(cfg, path)
    prompts = [p for p in cfg.prompt.split("|") if p]
    if not prompts:
        raise ConfigError(f"prompt={cfg.prompt!r}: expected at least one non-empty prompt")
    result = decoder.generate_text(prompts)
    for prompt, text in zip(prompts, result["texts"]):
        print(f"----- prompt: {prompt!r}\n{prompt}{text}\n", flush=True)
    print(
        f"decode: {len(prompts)} prompt(s), {result['generated_tokens']} new tokens | "
        f"time to first token {result['time_to_first_token_s'] * 1e3:.1f} ms | "
        f"{result['decode_tokens_per_s']:,.1f} tokens/s after the first token | "
        f"compiled in {result['compile_s']:.1f}s (not included)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
