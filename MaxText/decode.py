"""Generate text from a trained run or a checkpoint.

  python3 -m MaxText.decode configs/base.yml run_name=R [prompt="ROMEO:|JULIET:"] [key=value ...]
  python3 -m MaxText.decode configs/base.yml load_parameters_path=DIR [...]

The model keys and the tokenizer come from the checkpoint's saved config (the command line still wins).
Prints each prompt's continuation, the time to first token and decode tokens/s.
"""

import sys

from MaxText.config import ConfigError, exit_on_config_error
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint


@exit_on_config_error
def main(argv) -> int:
    """Loads the checkpoint, generates for each prompt and prints texts and timings."""
    cfg, path = load_config_from_checkpoint(argv, require_checkpoint=True)
    from MaxText.inference import session  # pylint: disable=import-outside-toplevel

    session.sampling_params(cfg)  # refuses a sampling combination before the checkpoint loads
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
