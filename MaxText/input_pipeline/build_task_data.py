"""Writes a small generated instruction set with exact answers, for fine-tuning scenarios that learn on a CPU.

    python3 -m MaxText.input_pipeline.build_task_data --output DIR [--task copy] [--train 4000] [--eval 100]

Writes (re-running with the same arguments gives byte-identical files):
  DIR/train.jsonl   chat records {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}, the
                    format configs/sft.yml reads (train_data_columns=messages)
  DIR/eval.jsonl    held-out records of the same form; no eval prompt occurs in train

Tasks, on a list of --min-len to --max-len items (default exactly 4):
  copy      "copy: king you sir love"     -> "king you sir love"
  reverse   "reverse: king you sir love"  -> "love sir you king"
  sort      "sort: king you sir love"     -> "king love sir you"
  mix       the three above, one chosen at random per record
Items are `WORDS` (--items words, joined by spaces) or digits (--items digits, written together: "4071").

Why the default is copy of exactly four words. Measured at end_to_end/sft_lora_task.sh's FULL=1 sizes (the
quickstart model pretrained 200-300 steps on Shakespeare, then LoRA rank 16 for 300-400 steps, ~2 min on 2
CPU cores), it goes from 0% to 70-100% exact match, while reverse (of digits or words), copy of 3-5 words and
a word-for-word "opposite" mapping stayed at 0-4% (sort was not measured). Two reasons. LoRA leaves the tied embedding and the final
norm frozen, so the model can only say tokens that a base this young already separates well: common
single-piece words ("\u2581lord", "\u2581you") do, digits (next to absent from Shakespeare) barely do. And
with a fixed length every reply token is the token a fixed distance back in the prompt, one attention offset
for all positions, which an adapter learns in a few hundred steps; reversal or a variable length needs a
position-dependent or content-based lookup that a base this young does not have. WORDS are each one
SentencePiece piece with the space before them in the shipped tokenizer (checked in
tests/input_pipeline/test_build_task_data.py), so prompt and reply tokenize alike.

Records are drawn from one seeded generator (numpy's PCG64): the eval records first, then train records
whose (task, items) is not an eval prompt's, so the two files are disjoint by prompt.
"""

import argparse
import json
import os
import sys

import numpy as np

# Frequent words of the built-in corpus, each one piece ("\u2581word") of assets/tokenizer/shakespeare.model.
WORDS = ("lord", "thee", "will", "you", "good", "man", "sir", "have", "king", "love")
DIGITS = tuple("0123456789")
TASKS = {
    "copy": lambda items: items,
    "reverse": lambda items: items[::-1],
    "sort": sorted,
}
CHOICES = tuple(TASKS) + ("mix",)
SEED = 20240501


def make_record(task: str, items: list, separator: str) -> dict:
    """One chat record: the user asks `task: items`, the assistant answers exactly."""
    return {
        "messages": [
            {"role": "user", "content": f"{task}: {separator.join(items)}"},
            {"role": "assistant", "content": separator.join(TASKS[task](list(items)))},
        ]
    }


def prompt_and_answer(record: dict) -> tuple[str, str]:
    """(user content, assistant content) of a single-turn chat record."""
    user, assistant = record["messages"][-2:]
    return user["content"], assistant["content"]


def generate(
    task: str = "copy",
    n_train: int = 4000,
    n_eval: int = 100,
    min_len: int = 4,
    max_len: int = 4,
    items: str = "words",
    seed: int = SEED,
) -> tuple[list, list]:
    """(train records, eval records); deterministic in the arguments, disjoint by prompt.

    Raises ValueError when an argument is out of range or there are too few distinct prompts.
    """
    if task not in CHOICES:
        raise ValueError(f"task {task!r}: expected one of {', '.join(CHOICES)}")
    if items not in ("words", "digits"):
        raise ValueError(f"items {items!r}: expected words or digits")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"lengths {min_len}..{max_len}: expected 1 <= min_len <= max_len")
    alphabet, separator = (WORDS, " ") if items == "words" else (DIGITS, "")
    tasks = list(TASKS) if task == "mix" else [task]
    space = len(tasks) * sum(len(alphabet) ** n for n in range(min_len, max_len + 1))
    if n_train < 0 or n_eval < 1 or n_train + n_eval > space // 2:
        raise ValueError(
            f"{n_train} train + {n_eval} eval records: expected n_eval >= 1 and at most {space // 2} in all "
            f"(half the distinct prompts of {task} on {min_len}..{max_len} {items})"
        )
    rng = np.random.Generator(np.random.PCG64(seed))
    seen: set = set()

    def draw(count: int) -> list:
        records = []
        while len(records) < count:
            name = tasks[int(rng.integers(len(tasks)))]
            length = int(rng.integers(min_len, max_len + 1))
            drawn = tuple(alphabet[i] for i in rng.integers(0, len(alphabet), size=length))
            if (name, drawn) not in seen:
                seen.add((name, drawn))
                records.append(make_record(name, list(drawn), separator))
        return records

    held_out = draw(n_eval)
    return draw(n_train), held_out


def write_jsonl(records: list, path: str) -> None:
    """One JSON object per line, "\\n" line ends (byte-identical across runs)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> list:
    """The records of a jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code (2 on bad arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--output", required=True, help="directory for train.jsonl and eval.jsonl")
    parser.add_argument("--task", default="copy", choices=CHOICES)
    parser.add_argument("--items", default="words", choices=("words", "digits"))
    parser.add_argument("--train", type=int, default=4000, help="train records")
    parser.add_argument("--eval", type=int, default=100, help="held-out records")
    parser.add_argument("--min-len", type=int, default=4, help="fewest items per prompt")
    parser.add_argument("--max-len", type=int, default=4, help="most items per prompt")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    try:
        train, held_out = generate(
            args.task, args.train, args.eval, args.min_len, args.max_len, args.items, args.seed
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, records in (("train", train), ("eval", held_out)):
        path = os.path.join(args.output, f"{name}.jsonl")
        write_jsonl(records, path)
        print(
            f"{name}: {len(records)} {args.task} records ({args.min_len}-{args.max_len} {args.items}) -> {path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
