"""Convert checkpoints between Hugging Face and MaxText, streaming one parameter at a time.

  python3 -m MaxText.convert hf_to_maxtext --input HF_DIR --output DIR [--dtype bfloat16] [--overwrite]
  python3 -m MaxText.convert maxtext_to_hf --input DIR --output HF_DIR [--step N] [--dtype D] [--max-shard-size 5GB]
      [--raw-params]
  python3 -m MaxText.convert quantize configs/base.yml load_parameters_path=DIR save_quantized_params_path=OUT \
      quantization=int8w|int8
  python3 -m MaxText.convert merge_lora --input RUN_OR_STEP --output DIR       # adapters folded into the kernels
  python3 -m MaxText.convert lora_to_peft --input RUN_OR_STEP --output DIR     # Hugging Face PEFT adapter
  python3 -m MaxText.convert peft_to_lora --input PEFT_DIR --base DIR --output DIR

hf_to_maxtext reads config.json, the safetensors files (one or sharded) and the tokenizer files of HF_DIR and
writes a checkpoint directory that `load_parameters_path=DIR` (train, decode) and `MaxText.api.load(DIR)` take
by path alone. maxtext_to_hf takes such a directory or a run directory (its latest checkpoint, or --step) and
writes a directory transformers loads (of a run that kept an EMA of the weights, ema_decay > 0, the EMA
unless --raw-params). Weights are only transposed, reshaped and stacked, so a round trip is
bit-exact. Exit codes: 0 done, 2 unsupported model, missing tensor or bad arguments (one line on stderr).
"""

import argparse
import os
import re
import sys

from MaxText.config import ConfigError, exit_on_config_error

DTYPE_CHOICES = ("float32", "bfloat16", "float16")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'5GB', '500MB', '1.5G' or a byte count -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"--max-shard-size {text!r}: expected a size such as 5GB or 500MB")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as a ConfigError (one line, exit 2) like the other entry points."""

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message}")


def parser() -> argparse.ArgumentParser:
    """The command line: two subcommands, one per direction."""
    p = _Parser(prog="python3 -m MaxText.convert", description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    to_mt = sub.add_parser("hf_to_maxtext", help="Hugging Face directory -> MaxText checkpoint directory")
    to_mt.add_argument(
        "--input", required=True, help="Hugging Face model directory (config.json, *.safetensors)"
    )
    to_mt.add_argument("--output", required=True, help="checkpoint directory to create")
    to_mt.add_argument(
        "--dtype", choices=DTYPE_CHOICES, help="cast the weights (default: keep the published dtype)"
    )
    to_mt.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output")
    to_hf = sub.add_parser(
        "maxtext_to_hf", help="MaxText checkpoint or run directory -> Hugging Face directory"
    )
    to_hf.add_argument("--input", required=True, help="converted checkpoint, run or step directory")
    to_hf.add_argument("--output", required=True, help="Hugging Face directory to create")
    to_hf.add_argument("--step", type=int, help="checkpoint step of a run directory (default: the latest)")
    to_hf.add_argument(
        "--dtype", choices=DTYPE_CHOICES, help="cast the weights (default: keep the stored dtype)"
    )
    to_hf.add_argument(
        "--max-shard-size", default="5GB", help="split safetensors files above this size (5GB)"
    )
    to_hf.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output")
    to_hf.add_argument(
        "--raw-params",
        action="store_true",
        help="export the raw parameters of a run that kept an EMA of the weights (default: the EMA)",
    )
    for name, what in (
        ("merge_lora", "LoRA run or step -> a full checkpoint with the adapters merged into the kernels"),
        ("lora_to_peft", "LoRA run or step -> a Hugging Face PEFT adapter directory"),
        ("peft_to_lora", "PEFT adapter directory + our base checkpoint -> a LoRA adapter checkpoint"),
    ):
        lora_cmd = sub.add_parser(name, help=what)
        lora_cmd.add_argument("--input", required=True, help="LoRA run, step or PEFT adapter directory")
        lora_cmd.add_argument("--output", required=True, help="directory to create")
        if name == "peft_to_lora":
            lora_cmd.add_argument(
                "--base", required=True, help="our checkpoint of the model the adapter is for"
            )
        lora_cmd.add_argument(
            "--overwrite", action="store_true", help="replace an existing non-empty --output"
        )
    quant = sub.add_parser(
        "quantize", help="float checkpoint -> int8 kernels + scales (conversion/quantize.py)"
    )
    quant.add_argument("config", nargs=argparse.REMAINDER, help="configs/base.yml key=value ...")
    return p


@exit_on_config_error
def main(argv) -> int:
    """Parses the command line and runs one conversion."""
    args = parser().parse_args(argv)
    if args.command == "quantize":  # a config command line, like train and decode
        from MaxText.conversion import quantize  # pylint: disable=import-outside-toplevel

        quantize.quantize_checkpoint(args.config)
        return 0
    if not os.path.isdir(args.input):
        raise ConfigError(f"--input {args.input}: no such directory")
    # Conversion is host work: keep JAX (used by orbax for process bookkeeping) off any accelerator.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.command in ("merge_lora", "lora_to_peft", "peft_to_lora"):
        from MaxText.conversion import lora  # pylint: disable=import-outside-toplevel

        if args.command == "peft_to_lora":
            lora.peft_to_lora(args.input, args.base, args.output, overwrite=args.overwrite)
        else:
            getattr(lora, args.command)(args.input, args.output, overwrite=args.overwrite)
    elif args.command == "hf_to_maxtext":
        from MaxText.conversion import hf_to_maxtext  # pylint: disable=import-outside-toplevel

        hf_to_maxtext.convert(args.input, args.output, dtype=args.dtype, overwrite=args.overwrite)
    else:
        from MaxText.conversion import maxtext_to_hf  # pylint: disable=import-outside-toplevel

        maxtext_to_hf.export(
            args.input,
            args.output,
            step=args.step,
            dtype=args.dtype,
            max_shard_bytes=parse_size(args.max_shard_size),
            overwrite=args.overwrite,
            ema=not args.raw_params,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
