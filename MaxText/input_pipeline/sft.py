"""Supervised fine-tuning records -> token ids and a per-token loss mask (use_sft=true).

Formats (the Hugging Face / TRL conventions), named by `train_data_columns`:
  "messages"            one column holding a conversation [{"role", "content"}, ...]; every assistant message
                        is trained, everything else (system, user, tool turns, the template's markup around
                        them) is context.
  "prompt,completion"   two columns. Two strings are concatenated as they are (no template), the completion
                        trained. Two lists of messages are a conversational prompt and completion: the prompt
                        is rendered with the generation prompt, the completion is the rest of the rendered
                        whole, trained.
  pre-tokenized         tokenize_train_data=false: the column holds token ids and a "loss_mask" column (what
                        `MaxText.prepare_data --sft` writes) says which are trained.

Which tokens are the assistant's. The conversation is rendered turn by turn with the model's chat template
(`chat_template`, the one the server prompts with), so templates without generation markers work too: for
assistant message k, render(messages[:k], add_generation_prompt=True) must be a prefix of
render(messages[:k+1]), itself a prefix of the whole conversation's render; the text between the first two is
the assistant's (with whatever the template closes the turn with, e.g. "<|im_end|>", so the model learns to
stop). The spans, context and assistant in turn, are tokenized separately and concatenated, so the mask is
exact at every boundary; a single-turn prompt is tokenized as the server tokenizes it. A template whose
renders are not prefixes, or that rejects the messages, is a `DataError` naming the record.

BOS/EOS as add_bos/add_eos say, as for pretraining: BOS is context; EOS takes the mask of the token before it,
so it is trained when the record ends with trained text (the final assistant turn ends there).
sft_train_on_completion_only=false trains every token. The mask is stored per token: mask[i] = 1 when token i
is trained as a target (`packing.fill_row` turns it into targets_segmentation).

Length. A record of more than max_target_length + 1 tokens (T pairs) is truncated to T + 1 tokens or dropped
(`sft_overlong`); it is never cut into several pieces the way pretraining documents are. A record left with
no trained target is dropped. Dropped records stay in place as empty documents (no pairs), so record order
and mixture counts do not move; `summarize` counts what happened.
"""

import dataclasses

import numpy as np

from MaxText.input_pipeline import chat_template, tokenizers
from MaxText.input_pipeline.sources import DataError

MASK_COLUMN = "loss_mask"
OVERLONG = ("truncate", "drop")
# Example.status values, counted by `summarize`.
KEPT, TRUNCATED, DROPPED_OVERLONG, DROPPED_UNTRAINED = (
    "kept",
    "truncated",
    "dropped_overlong",
    "dropped_untrained",
)


@dataclasses.dataclass(frozen=True)
class Example:
    """One record as trained: int32 ids and int8 mask of equal length (both empty when dropped)."""

    ids: np.ndarray
    mask: np.ndarray
    status: str  # KEPT | TRUNCATED | DROPPED_OVERLONG | DROPPED_UNTRAINED


def parse_columns(column: str) -> list[str]:
    """train_data_columns of an SFT run: ["messages"] or ["prompt", "completion"] (any names)."""
    names = [c.strip() for c in column.split(",") if c.strip()]
    if len(names) not in (1, 2):
        raise DataError(
            f"train_data_columns={column!r}: use_sft expects one column of messages (e.g. 'messages') or two, "
            "prompt and completion (e.g. 'prompt,completion')"
        )
    return names


def _check_messages(messages, name: str) -> list:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"column {name!r} is not a non-empty list of {{role, content}} messages")
    for k, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(
                f"{name}[{k}] is not a {{role, content}} message with string role and content: {str(m)[:80]}"
            )
    return [dict(m) for m in messages]


def _render(template, messages: list, add_generation_prompt: bool) -> str:
    try:
        return template.render(messages, add_generation_prompt=add_generation_prompt)
    except ValueError as e:
        raise ValueError(f"{e} (roles {[m['role'] for m in messages]})") from None


def chat_spans(template: chat_template.ChatTemplate, messages: list) -> list[tuple[str, bool]]:
    """[(text, trained)] covering render(messages) in order; trained = an assistant message's span.

    Raises ValueError (naming the message) when the template's renders are not prefixes of one another.
    """
    full = _render(template, messages, False)
    spans, cursor = [], 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _render(template, messages[:k], True)
        end = _render(template, messages[: k + 1], False)
        if not end.startswith(start):
            raise ValueError(
                f"the chat template's render of messages[:{k}] with add_generation_prompt=True is not a prefix "
                f"of its render through assistant message {k}, so the assistant's tokens cannot be found"
            )
        if not full.startswith(end) or len(start) < cursor:
            raise ValueError(
                f"the chat template renders messages[:{k + 1}] differently inside the whole conversation "
                f"(not a prefix of it), so assistant message {k}'s tokens cannot be found"
            )
        spans += [(full[cursor : len(start)], False), (full[len(start) : len(end)], True)]
        cursor = len(end)
    spans.append((full[cursor:], False))
    return [(text, trained) for text, trained in spans if text]


def record_spans(
    template: chat_template.ChatTemplate, record: dict, columns: list[str]
) -> list[tuple[str, bool]]:
    """[(text, trained)] of one text record (see the module docstring for the formats); ValueError if bad."""
    if not isinstance(record, dict):
        raise ValueError(f"is a {type(record).__name__}, not a record with columns {columns}")
    missing = [c for c in columns if record.get(c) is None]  # hf fills a column a record lacks with null
    if missing:
        present = sorted(k for k, v in record.items() if v is not None)
        raise ValueError(
            f"train_data_columns={','.join(columns)!r}: no column {missing[0]!r} in this record (it has {present})"
        )
    values = [record[c].decode("utf-8") if isinstance(record[c], bytes) else record[c] for c in columns]
    if len(columns) == 1:
        return chat_spans(template, _check_messages(values[0], columns[0]))
    prompt, completion = values
    if isinstance(prompt, str) and isinstance(completion, str):
        return [(text, trained) for text, trained in ((prompt, False), (completion, True)) if text]
    if isinstance(prompt, (list, tuple)) and isinstance(completion, (list, tuple)):
        prompt = _check_messages(prompt, columns[0])
        start = _render(template, prompt, True)
        full = _render(template, prompt + _check_messages(completion, columns[1]), False)
        if not full.startswith(start):
            raise ValueError(
                "the chat template's render of the prompt with add_generation_prompt=True is not a prefix of "
                "its render of prompt + completion, so the completion's tokens cannot be found"
            )
        return [(text, trained) for text, trained in ((start, False), (full[len(start) :], True)) if text]
    raise ValueError(
        f"columns {columns[0]!r} and {columns[1]!r} must both be strings or both lists of messages, got "
        f"{type(prompt).__name__} and {type(completion).__name__}"
    )


def tokenize_spans(tokenizer, spans: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """(ids, mask) of the spans, each tokenized on its own, without BOS/EOS."""
    ids, mask = [], []
    for text, trained in spans:
        piece = tokenizer.encode(text)
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask


@dataclasses.dataclass(frozen=True)
class SftEncoder:  # pylint: disable=too-many-instance-attributes
    """(record index, record) -> `Example`; picklable (tokenizer and template are loaded in each worker).

    `where` names the source in error messages ("hf_path='json' (data.jsonl)").
    """

    tokenizer_path: str
    template: str  # config chat_template ("" = the tokenizer's, else the default)
    column: str
    tokenize: bool
    add_bos: bool
    add_eos: bool
    completion_only: bool
    overlong: str  # "truncate" | "drop"
    max_target_length: int
    where: str
    wants_index: bool = True  # sources.encode_records passes (index, record)

    def __call__(self, item) -> Example:
        index, record = item
        tokenizer = tokenizers.load_tokenizer(self.tokenizer_path)
        try:
            if self.tokenize:
                spans = record_spans(
                    chat_template.load_chat_template(self.template, self.tokenizer_path),
                    record,
                    parse_columns(self.column),
                )
                ids, mask = tokenize_spans(tokenizer, spans)
            else:
                ids, mask = self._pretokenized(record)
        except ValueError as e:
            raise DataError(f"{self.where} record {index}: {e}") from None
        return self.finish(tokenizer, ids, mask)

    def _pretokenized(self, record) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(record, dict) or self.column not in record:
            names = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"train_data_columns={self.column!r}: no such column (columns: {names})")
        ids = np.asarray(record[self.column]).reshape(-1)
        if isinstance(record[self.column], str) or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(
                f"train_data_columns={self.column!r} does not hold token ids; set tokenize_train_data=true"
            )
        if MASK_COLUMN not in record or record[MASK_COLUMN] is None:
            if self.completion_only:
                raise ValueError(
                    f"has no {MASK_COLUMN!r} column (write it with MaxText.prepare_data --sft), and "
                    "sft_train_on_completion_only=true needs it; set it false to train every token"
                )
            return ids, np.ones(ids.size, np.int8)
        mask = np.asarray(record[MASK_COLUMN]).reshape(-1)
        if mask.size != ids.size or not np.isin(mask, (0, 1)).all():
            raise ValueError(
                f"{MASK_COLUMN!r} must hold one 0 or 1 per token id ({mask.size} for {ids.size} ids)"
            )
        return ids, mask

    def finish(self, tokenizer, ids, mask) -> Example:
        """Adds BOS/EOS, applies sft_train_on_completion_only, then the length rule."""
        ids, mask = np.asarray(ids, np.int32).reshape(-1), np.asarray(mask, np.int8).reshape(-1)
        last = int(mask[-1]) if mask.size else 0
        if self.add_bos:
            ids, mask = np.concatenate([[tokenizer.bos_id], ids]), np.concatenate([[0], mask])
        if self.add_eos:
            ids, mask = np.concatenate([ids, [tokenizer.eos_id]]), np.concatenate([mask, [last]])
        if not self.completion_only:
            mask = np.ones_like(mask)
        status = KEPT
        if ids.size > self.max_target_length + 1:
            if self.overlong == "drop":
                return _dropped(DROPPED_OVERLONG)
            ids, mask, status = (
                ids[: self.max_target_length + 1],
                mask[: self.max_target_length + 1],
                TRUNCATED,
            )
        if not mask[1:].any():  # the first token is never a target
            return _dropped(DROPPED_UNTRAINED)
        return Example(ids.astype(np.int32), mask.astype(np.int8), status)


def _dropped(status: str) -> Example:
    return Example(np.zeros(0, np.int32), np.zeros(0, np.int8), status)


def summarize(examples) -> dict:
    """Counts of `Example`s: records, truncated, dropped_overlong, dropped_untrained, trained_tokens (targets
    that count in the loss, one epoch)."""
    examples = list(examples)
    counts = {"records": len(examples), TRUNCATED: 0, DROPPED_OVERLONG: 0, DROPPED_UNTRAINED: 0}
    for e in examples:
        if e.status != KEPT:
            counts[e.status] += 1
    counts["trained_tokens"] = int(sum(int(e.mask[1:].sum()) for e in examples))
    return counts


def summary_line(stats: dict | None) -> str:
    """The trainer's one start-up line about the SFT data this host read."""
    if not stats:
        return "sft data: no counts (this iterator does not report them)"
    return (
        f"sft data (train records this host read): {stats['records']:,} records | {stats[TRUNCATED]:,} "
        f"truncated | {stats[DROPPED_OVERLONG]:,} dropped as too long | {stats[DROPPED_UNTRAINED]:,} dropped "
        f"with no trained token | {stats['trained_tokens']:,} trained tokens per epoch"
    )
