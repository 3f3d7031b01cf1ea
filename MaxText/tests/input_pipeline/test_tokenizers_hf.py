"""Hugging Face tokenizer.json and tiktoken rank files: dispatch by file, same ids as the reference libraries,
BOS/EOS family defaults and overrides, decode, byte accounting and identity."""

import base64
import json

import numpy as np
import pytest

from MaxText.input_pipeline import BUILTIN_TOKENIZER_PATH
from MaxText.models import registry
from MaxText.input_pipeline.tokenizers import (
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    load_tokenizer,
)

TEXTS = ["To be, or not to be", "  spaces\tand\nnewlines ", "h\u00e9llo \U0001f600 \u4e2d\u6587", ""]


@pytest.fixture(scope="module", name="hf_dir")
def _hf_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from MaxText.tests.helpers import make_tokenizer

    directory = tmp_path_factory.mktemp("hf_tok")
    make_tokenizer(directory)
    return directory


def test_hf_tokenizer_matches_transformers(hf_dir):
    import transformers

    ref = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    tok = load_tokenizer(str(hf_dir / "tokenizer.json"))
    assert isinstance(tok, HuggingFaceTokenizer) and tok.type_name == "huggingface"
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 1, -1, 300)
    assert (tok.add_bos, tok.add_eos) == (True, False)  # the file's post-processor adds BOS only
    for text in TEXTS:
        assert tok.encode_with_special_tokens(text) == ref(text).input_ids
        assert tok.encode(text) == ref(text, add_special_tokens=False).input_ids
        assert tok.decode(tok.encode_with_special_tokens(text, add_eos=True)) == text
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert tok.encode_with_special_tokens("To be", add_bos=False, add_eos=True) == tok.encode("To be") + [1]
    assert tok.identity()["type"] == "huggingface" and tok.identity()["file"] == "tokenizer.json"


def test_hf_byte_lengths_count_decoded_bytes(hf_dir):
    tok = load_tokenizer(str(hf_dir / "tokenizer.json"))
    sizes = tok.token_byte_lengths()
    assert sizes.shape == (tok.vocab_size,) and sizes[[tok.bos_id, tok.eos_id]].tolist() == [0, 0]
    for text in TEXTS:
        assert int(sizes[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_tokenizer_config_overrides_bos_eos_defaults(hf_dir, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((hf_dir / name).read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(add_bos_token=False, add_eos_token=True, pad_token="</s>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert (tok.add_bos, tok.add_eos, tok.pad_id) == (False, True, 1)
    assert tok.encode_with_special_tokens("To be") == tok.encode("To be") + [1]


def _write_ranks(path) -> dict:
    """A tiny byte-level BPE: the 256 bytes, then merges that spell ' the' and 'to'."""
    merges = [b"th", b"he", b"the", b" t", b" the", b"to", b" to"]
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({m: 256 + k for k, m in enumerate(merges)})
    with open(path, "wb") as f:
        for token, rank in ranks.items():
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    return ranks


@pytest.mark.parametrize("name", ["tokenizer.model", "vocab.tiktoken"])
def test_tiktoken_from_local_ranks(tmp_path, name):
    pytest.importorskip("tiktoken")
    ranks = _write_ranks(tmp_path / name)
    tok = load_tokenizer(str(tmp_path / name))
    assert isinstance(tok, TiktokenTokenizer)
    n = len(ranks)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (n, n + 1, n + 256)  # Llama 3's 256 special tokens
    assert (tok.add_bos, tok.add_eos) == (True, False)
    ids = tok.encode("to the theatre")
    assert ids[:2] == [ranks[b"to"], ranks[b" the"]] and tok.decode(ids) == "to the theatre"
    assert tok.encode_with_special_tokens("to") == [n, ranks[b"to"]]
    assert tok.encode("<|begin_of_text|>to") == [n, ranks[b"to"]]  # special tokens in text are recognised
    sizes = tok.token_byte_lengths()
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
        assert int(sizes[tok.encode(text)].sum()) == len(text.encode("utf-8"))
    assert sizes[n:].sum() == 0 and tok.identity()["type"] == "tiktoken"


def test_sentencepiece_defaults_and_dispatch(tmp_path):
    tok = load_tokenizer(BUILTIN_TOKENIZER_PATH)
    assert isinstance(tok, SentencePieceTokenizer) and (tok.add_bos, tok.add_eos) == (True, False)
    assert tok.encode_with_special_tokens("To be", add_eos=True) == [tok.bos_id] + tok.encode("To be") + [
        tok.eos_id
    ]
    other = tmp_path / "notes.json"
    other.write_text(json.dumps({"vocab": {}}))
    with pytest.raises(ValueError, match="unknown tokenizer format"):
        load_tokenizer(str(other))
    assert np.asarray(tok.token_byte_lengths()).dtype == np.int32


def test_family_bos_eos_defaults_apply_where_the_files_are_silent(hf_dir, tmp_path):
    """Per family: a bare SentencePiece or tiktoken file follows the family (Qwen 3 adds no BOS, Llama and
    Gemma do); what tokenizer files state (a tokenizer.json's post-processor) wins over the family."""
    pytest.importorskip("tiktoken")
    _write_ranks(tmp_path / "vocab.tiktoken")
    defaults = {s.name: s.add_bos_eos for s in registry.all_families() if s.add_bos_eos}
    assert set(defaults) == {"llama2", "mistral", "gemma", "gemma2", "gemma3", "qwen3", "gpt3"}
    for family, (bos, eos) in defaults.items():
        for path in (BUILTIN_TOKENIZER_PATH, str(tmp_path / "vocab.tiktoken")):
            tok = load_tokenizer(path, defaults[family])
            assert (tok.add_bos, tok.add_eos) == (bos, eos), (family, path)
            assert tok.encode_with_special_tokens("to", add_bos=True, add_eos=True) == (
                [tok.bos_id] + tok.encode("to") + [tok.eos_id]
            )
            assert tok.encode_with_special_tokens("to", add_bos=False) == tok.encode("to") + (
                [tok.eos_id] if eos else []
            )
        assert (load_tokenizer(str(hf_dir / "tokenizer.json"), defaults[family]).add_bos, family) == (
            True,
            family,
        )
    assert defaults["qwen3"] == (False, False) and defaults["gemma3"] == (True, False)
