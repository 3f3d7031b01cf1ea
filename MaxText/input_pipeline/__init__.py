"""Data input: built-in Shakespeare corpus and synthetic tokens, packed rows, checkpointable iterators.

Public interface (see `pipeline` for the batch contract):
  DataConfig, make_train_iterator(cfg, process_index, process_count) -> TrainIterator,
  make_eval_batches(cfg, num_batches, process_index, process_count) -> list[batch],
  merge_states(per-host states) -> the state to save,
  sft_summary_line(train_iterator.stats) -> the start-up line about SFT records (use_sft),
  ChatTemplate, load_chat_template(config chat_template, tokenizer_path) (what serving and SFT render with),
  Tokenizer, SentencePieceTokenizer, load_tokenizer(path),
  BUILTIN_CORPUS_PATH, BUILTIN_TOKENIZER_PATH, BATCH_KEYS.
"""

from MaxText.input_pipeline.builtin_corpus import BUILTIN_CORPUS_PATH, BUILTIN_TOKENIZER_PATH
from MaxText.input_pipeline.chat_template import ChatTemplate, load_chat_template
from MaxText.input_pipeline.iterators import TrainIterator
from MaxText.input_pipeline.lanes import merge_states
from MaxText.input_pipeline.packing import BATCH_KEYS
from MaxText.input_pipeline.pipeline import DataConfig, make_eval_batches, make_train_iterator
from MaxText.input_pipeline.sft import summary_line as sft_summary_line
from MaxText.input_pipeline.tokenizers import SentencePieceTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "BATCH_KEYS",
    "BUILTIN_CORPUS_PATH",
    "BUILTIN_TOKENIZER_PATH",
    "ChatTemplate",
    "DataConfig",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TrainIterator",
    "load_chat_template",
    "load_tokenizer",
    "make_eval_batches",
    "make_train_iterator",
    "merge_states",
    "sft_summary_line",
]
