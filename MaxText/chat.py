"""Chat with a trained model in the terminal, on the same engine, template and prompt rule as the server.

  python3 -m MaxText.chat configs/base.yml load_parameters_path=DIR [key=value ...]
  python3 -m MaxText.chat configs/base.yml run_name=R [...]

Replies stream as they are generated; the history is re-rendered with the chat template (config
`chat_template`, else the tokenizer's, else "role: content" lines) every turn. Commands: /reset, /system
TEXT, /help, /exit (or Ctrl-D). Ctrl-C stops a reply. Sampling: decode_sampling_strategy, _temperature,
_top_k, _nucleus_p, _seed; max_decode_steps per reply. One decode slot unless decode_batch_size is given.
"""

import sys

from MaxText.config import exit_on_config_error
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint
from MaxText.serve import model_id


@exit_on_config_error
def main(argv) -> int:
    """Loads the checkpoint, compiles, prints the banner and runs the chat until /exit or EOF."""
    # One conversation needs one slot; the serving default (8) would decode 8 rows per token. A later
    # decode_batch_size on the command line still wins.
    argv = argv[:1] + ["decode_batch_size=1"] + argv[1:] if argv and "=" not in argv[0] else argv
    cfg, path = load_config_from_checkpoint(argv, require_checkpoint=True)
    # pylint: disable=import-outside-toplevel
    from MaxText.inference import chat_repl, session
    from MaxText.input_pipeline.chat_template import load_chat_template

    # Fail before the checkpoint loads: a context that can never hold a turn, a template that cannot load.
    chat_repl.prompt_room(cfg)
    session.sampling_params(cfg)
    template = load_chat_template(cfg.chat_template, cfg.tokenizer_path)
    try:
        decoder = session.DecodeSession.from_checkpoint(cfg, path)
        compile_s = decoder.warmup()
    except KeyboardInterrupt:
        return 130
    repl = chat_repl.ChatRepl(decoder, template)
    if repl.terminal:
        import readline  # noqa: F401  pylint: disable=unused-import  # line editing and history for input()
    repl.banner(model_id(path), compile_s)
    return repl.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
