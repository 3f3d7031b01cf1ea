"""Exact-match accuracy of chat models on held-out records with exact answers (end_to_end/sft_lora_task.sh).

  python3 end_to_end/task_accuracy.py score --data eval.jsonl --out result.json before=runs/base after=runs/lora
  python3 end_to_end/task_accuracy.py reload --data eval.jsonl --result result.json --hf-base hf/base \
      --peft hf/lora --adapter runs/from_peft [--hf-prompts 8]

Each record is {"messages": [{"role": "user", ...}, {"role": "assistant", "content": ANSWER}]}. The user
message is rendered with the model's chat template and the generation prompt (as MaxText.serve and
MaxText.chat prompt, and as SFT trained), encoded with the prompt rule of MaxText.api (BOS as the checkpoint
says) and decoded greedily on the serving Engine. The reply is the text up to EOS, cut where the template
closes the assistant's turn (the text it renders after the assistant's content: "\\n" for the default
"role: content" template), then stripped; it is correct when it equals the stripped ANSWER.

`score` loads each LABEL=PATH with MaxText.api.load (a run, a checkpoint or a Hugging Face directory) and
prints `exact-match LABEL: X/N (p%)`; the result JSON holds every model's replies and greedy tokens.
`reload` scores the model api.load(HF_BASE, lora_path=ADAPTER) gives (the exported base plus the PEFT
adapter read back) and fails unless its greedy tokens equal those of the result's last model, its logits
equal that model's bit for bit and differ from the first model's (the base: the adapters count); when
torch, transformers and peft are installed, it also loads HF_BASE + PEFT in transformers and fails unless
their greedy tokens agree with ours on the first --hf-prompts records and their logits lie within
LOGIT_TOLERANCE of ours, relative to the largest |logit|.
"""

import argparse
import json
import sys

import numpy as np

from MaxText import api
from MaxText.inference.batcher import Batcher, Request
from MaxText.inference.engine import Engine, EngineConfig, SamplingParams
from MaxText.input_pipeline.build_task_data import prompt_and_answer, read_jsonl
from MaxText.input_pipeline.chat_template import load_chat_template
from MaxText.parallel import mesh as mesh_lib

# transformers + PEFT against our logits: float32 rounding across two frameworks grows with the logits' size
# (up to 7e-6 of the largest |logit| measured for the FULL=1 model, whose adapted logits reach 15; 8e-6
# absolute for its base), so the bound is relative to the largest |logit|.
LOGIT_TOLERANCE = 2e-5


class Prompts:
    """The records' prompts as one model's template and tokenizer render them, and how its replies end."""

    def __init__(self, model: api.Model, records: list):
        template = load_chat_template(model.cfg.chat_template, model.cfg.tokenizer_path)
        self.tokenizer = model.tokenizer
        self.answers, self.ids, reply_lengths = [], [], []
        for record in records:
            question, answer = prompt_and_answer(record)
            user = {"role": "user", "content": question}
            prompt = template.render([user], add_generation_prompt=True)
            full = template.render(
                [user, {"role": "assistant", "content": answer}], add_generation_prompt=False
            )
            if not full.startswith(prompt) or answer not in full[len(prompt) :]:
                raise ValueError(f"the chat template does not render the answer after the prompt: {full!r}")
            reply = full[len(prompt) :]
            # What closes the turn: the text after the answer ("\n"), or its visible part ("<|im_end|>").
            tail = reply[reply.rindex(answer) + len(answer) :]
            self.turn_end = tail.strip() or tail
            self.answers.append(answer.strip())
            self.ids.append(self.tokenizer.encode(prompt))
            reply_lengths.append(len(self.tokenizer.encode(reply, add_bos=False)))
        self.max_new = max(reply_lengths) + 1  # room for EOS

    def reply(self, tokens) -> str:
        """The reply in generated token ids (EOS excluded): cut at the turn's end, stripped."""
        text = self.tokenizer.decode(tokens)
        if self.turn_end:
            text = text.split(self.turn_end, 1)[0]
        return text.strip()


def greedy(model: api.Model, prompts: Prompts, slots: int = 32) -> list:
    """Generated token ids (EOS excluded) per prompt: greedy, on the Engine that api.generate uses, with
    one prefill bucket for every prompt length (each prompt is prefilled alone, padded to it)."""
    longest = max(len(ids) for ids in prompts.ids)
    config = EngineConfig(
        slots=min(slots, len(prompts.ids)), max_length=longest + prompts.max_new, buckets=(longest,)
    )
    requests = [Request(list(ids), prompts.max_new, SamplingParams()) for ids in prompts.ids]
    with mesh_lib.activate(model.mesh, model.rules):
        done = Batcher(Engine(model.module, model.params, config), model.eos_id).complete(requests)
    return [completion.tokens for completion in done]


def score(label: str, model: api.Model, records: list) -> dict:
    """Greedy replies of `model` and their exact-match accuracy; prints the accuracy line."""
    prompts = Prompts(model, records)
    tokens = greedy(model, prompts)
    replies = [prompts.reply(t) for t in tokens]
    correct = sum(r == a for r, a in zip(replies, prompts.answers))
    n = len(records)
    print(f"exact-match {label}: {correct}/{n} ({100.0 * correct / n:.1f}%)", flush=True)
    return {"correct": correct, "total": n, "accuracy": correct / n, "replies": replies, "tokens": tokens}


def _examples(result: dict, records: list, k: int = 3) -> None:
    for record, reply in list(zip(records, result["replies"]))[:k]:
        question, answer = prompt_and_answer(record)
        print(f"  {question!r} -> {reply!r} (expected {answer!r})")


def cmd_score(args) -> int:
    """Scores each LABEL=PATH; writes the result JSON."""
    records = read_jsonl(args.data)
    result = {"data": args.data, "models": {}}
    for spec in args.models:
        label, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"task_accuracy: {spec!r}: expected LABEL=PATH")
        entry = score(label, api.load(path), records)
        _examples(entry, records)
        result["models"][label] = {"path": path, **entry}
    _write(args.out, result)
    return 0


def _write(path: str, result: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


def hf_agreement(model: api.Model, prompts: Prompts, ours: list, args, k: int) -> dict:
    """transformers + PEFT on the exported base and adapter against our model on the first k prompts:
    the largest logit difference over the prompts, and whether the greedy tokens (up to EOS) agree with
    `ours`, our greedy tokens per prompt."""
    # pylint: disable=import-outside-toplevel
    import peft
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    base = transformers.AutoModelForCausalLM.from_pretrained(args.hf_base, dtype=torch.float32)
    hf = peft.PeftModel.from_pretrained(base, args.peft).eval()
    diff, largest, generated = 0.0, 1.0, []
    for ids in prompts.ids[:k]:
        row = np.asarray([ids], np.int64)
        with torch.no_grad():
            logits = hf(torch.as_tensor(row)).logits.numpy()
            out = hf.generate(
                torch.as_tensor(row),
                attention_mask=torch.ones_like(torch.as_tensor(row)),
                max_new_tokens=prompts.max_new,
                do_sample=False,
                eos_token_id=model.eos_id,
                pad_token_id=model.pad_id,
            )[0, len(ids) :].tolist()
        ours_logits = model.logits(row)
        diff = max(diff, float(np.abs(ours_logits - logits).max()))
        largest = max(largest, float(np.abs(ours_logits).max()))
        generated.append(out[: out.index(model.eos_id)] if model.eos_id in out else out)
    same = sum(a == b for a, b in zip(generated, ours))
    print(
        f"transformers + PEFT on the export: {same}/{k} greedy generations agree with MaxText's token for "
        f"token; max |logit difference| {diff:.2e} ({diff / largest:.1e} of the largest |logit|, {largest:.1f}; "
        f"tolerance {LOGIT_TOLERANCE:.0e})",
        flush=True,
    )
    replies = [prompts.reply(t) for t in generated]
    return {
        "prompts": k,
        "replies": replies,
        "tokens": generated,
        "agree": same == k,
        "max_logit_diff": diff,
        "relative_logit_diff": diff / largest,
    }


def _max_diff(a: api.Model, b: api.Model, rows: list) -> float:
    """Largest |logit difference| of two models over prompts (each row its own forward pass)."""
    return max(float(np.abs(a.logits([r]) - b.logits([r])).max()) for r in rows)


def cmd_reload(args) -> int:
    """Scores the reloaded export against the result's last model; checks transformers + PEFT agree."""
    records = read_jsonl(args.data)
    with open(args.result, encoding="utf-8") as f:
        result = json.load(f)
    label, expected = list(result["models"].items())[-1]
    model = api.load(args.hf_base, lora_path=args.adapter)
    entry = score("reloaded (HF base + PEFT adapter)", model, records)
    result["reloaded"] = {"hf_base": args.hf_base, "adapter": args.adapter, **entry}
    # The export is bit-exact, so the logits must be too; and the adapters must matter (the first model of
    # the result, when there are two, is the base the run adapted), or this comparison would not test them.
    rows = Prompts(model, records).ids[: args.hf_prompts]
    exact = _max_diff(model, api.load(expected["path"]), rows)
    same = entry["tokens"] == expected["tokens"]
    ok = same and exact == 0.0
    line = f"round trip: greedy tokens {'equal' if same else 'DIFFER from'} those of {label!r} before export"
    line += f"; max |logit difference| {exact:.2e} (bit-exact: 0)"
    first_label, first = next(iter(result["models"].items()))
    if first_label != label:
        moved = _max_diff(model, api.load(first["path"]), rows)
        ok = ok and moved > 0.0
        line += f"; the adapters move the logits by up to {moved:.2e} from {first_label!r}"
    print(line, flush=True)
    try:
        import peft  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        import transformers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError as e:
        print(
            f"transformers + PEFT check skipped: {e.name} is not installed (pip install -r requirements-test.txt)"
        )
    else:
        k = min(args.hf_prompts, len(records))
        hf = hf_agreement(model, Prompts(model, records), entry["tokens"], args, k)
        result["transformers_peft"] = hf
        ok = ok and hf["agree"] and hf["relative_logit_diff"] <= LOGIT_TOLERANCE
    _write(args.result, result)
    return 0 if ok else 1


def main(argv=None) -> int:
    """Command-line entry point: 0 done, 1 when a reload check fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="exact-match accuracy of LABEL=PATH models")
    p.add_argument("--data", required=True, help="held-out jsonl records")
    p.add_argument("--out", required=True, help="result JSON to write")
    p.add_argument("models", nargs="+", metavar="LABEL=PATH")
    p = sub.add_parser("reload", help="score the exported model read back; compare with transformers + PEFT")
    p.add_argument("--data", required=True)
    p.add_argument("--result", required=True, help="result JSON of `score` (updated)")
    p.add_argument("--hf-base", required=True, help="the base as maxtext_to_hf exported it")
    p.add_argument("--peft", required=True, help="the adapter as lora_to_peft exported it")
    p.add_argument("--adapter", required=True, help="the PEFT adapter as peft_to_lora read it back")
    p.add_argument("--hf-prompts", type=int, default=8, help="prompts compared with transformers + PEFT")
    args = parser.parse_args(argv)
    return cmd_score(args) if args.command == "score" else cmd_reload(args)


if __name__ == "__main__":
    sys.exit(main())
