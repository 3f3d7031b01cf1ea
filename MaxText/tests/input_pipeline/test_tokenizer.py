"""The shipped SentencePiece tokenizer: ids, exact round trips, byte accounting for bits/byte, identity."""

import hashlib
import json

import numpy as np
import pytest

from MaxText.input_pipeline import (
    BUILTIN_TOKENIZER_PATH,
    SentencePieceTokenizer,
    build_builtin_assets,
    builtin_corpus,
    load_tokenizer,
)

ODD_TEXTS = [
    "",
    " ",
    "  leading and  double  spaces, trailing ",
    "tabs\tand\r\nwindows newlines\n\n\n",
    "h\u00e9llo \U0001f600 \u4e2d\u6587 \ufb01 na\u0308ive",  # accents, emoji, CJK, ligature, combining mark
    "{curly} <angle> ~tilde~ `back` |pipe| 12345 3.14",
]


@pytest.fixture(scope="module", name="tok")
def _tok():
    return load_tokenizer(BUILTIN_TOKENIZER_PATH)


@pytest.fixture(scope="module", name="sample_docs")
def _sample_docs():
    docs = builtin_corpus.load_documents()
    return [docs[i] for i in range(0, len(docs), 25)]


def test_special_ids_and_vocab(tok):
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (4096, 0, 1, 2)


def test_round_trip_is_exact(tok, sample_docs):
    for text in sample_docs + ODD_TEXTS:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.bos_id not in ids and tok.eos_id not in ids
        assert tok.decode(ids) == text
    assert tok.encode_batch(sample_docs[:3]) == [tok.encode(t) for t in sample_docs[:3]]


def test_decode_skips_control_ids(tok):
    ids = tok.encode("To be, or not to be")
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id, tok.pad_id]) == "To be, or not to be"


def test_token_byte_lengths_count_decoded_bytes_exactly(tok, sample_docs):
    sizes = tok.token_byte_lengths()
    assert sizes.dtype == np.int32 and sizes.shape == (tok.vocab_size,)
    assert sizes[[tok.pad_id, tok.bos_id, tok.eos_id]].tolist() == [0, 0, 0]
    assert (sizes[4:260] == 1).all()  # byte-fallback pieces <0x00>..<0xFF>
    assert sizes[tok.encode("\u2581the")[-1]] == 4  # "▁the" -> " the"
    for text in sample_docs + ODD_TEXTS:
        ids = tok.encode(text)
        # The shipped model has no dummy prefix, so not even a leading space is lost: exact on both sides.
        assert sizes[ids].sum() == len(tok.decode(ids).encode("utf-8")) == len(text.encode("utf-8"))


def test_lower_one_eighth_block_is_the_only_lossy_character(tok):
    # SentencePiece uses U+2581 as its space marker, so it decodes to a space; byte counts follow decode.
    ids = tok.encode("a\u2581b")
    assert tok.decode(ids) == "a b"
    assert tok.token_byte_lengths()[ids].sum() == len("a b")


def test_identity_is_json_and_matches_the_file(tok):
    identity = json.loads(json.dumps(tok.identity()))
    with open(BUILTIN_TOKENIZER_PATH, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert identity == {
        "type": "sentencepiece",
        "file": "shakespeare.model",
        "sha256": digest,
        "vocab_size": 4096,
    }


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="tokenizer_path is empty"):
        load_tokenizer("")
    with pytest.raises(FileNotFoundError, match="missing.model"):
        load_tokenizer(str(tmp_path / "missing.model"))
    other = tmp_path / "vocab.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="unknown tokenizer format"):
        load_tokenizer(str(other))


def test_tokenizer_training_is_deterministic(tmp_path, sample_docs):
    models = [
        build_builtin_assets.train_tokenizer(sample_docs[:4], str(tmp_path / f"t{i}.model"), vocab_size=400)
        for i in range(2)
    ]
    assert models[0] == models[1]
    small = load_tokenizer(str(tmp_path / "t0.model"))
    assert small.vocab_size == 400 and small.decode(small.encode(sample_docs[5])) == sample_docs[5]


def test_normalise_work():
    raw = "TITLE  \r\n\n\n\nby W. S.\t \n\n\nLine one\nLine two   \n\n"
    assert build_builtin_assets.normalise_work(raw) == "TITLE\n\nby W. S.\n\nLine one\nLine two"
