"""The generated instruction set (build_task_data, end_to_end/sft_lora_task.sh): deterministic files, exact
answers, eval disjoint from train, and items that tokenize to one piece each with the shipped tokenizer."""

import pytest

from MaxText.input_pipeline import build_task_data, builtin_corpus, tokenizers


def test_files_are_deterministic_and_disjoint(tmp_path):
    for run in ("a", "b"):
        assert build_task_data.main(["--output", str(tmp_path / run), "--train", "300", "--eval", "20"]) == 0
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = build_task_data.read_jsonl(str(tmp_path / "a" / "train.jsonl"))
    held_out = build_task_data.read_jsonl(str(tmp_path / "a" / "eval.jsonl"))
    assert (len(train), len(held_out)) == (300, 20)
    prompts = [build_task_data.prompt_and_answer(r)[0] for r in train + held_out]
    assert len(set(prompts)) == len(prompts)
    assert [m["role"] for m in train[0]["messages"]] == ["user", "assistant"]


@pytest.mark.parametrize("task", ["copy", "reverse", "sort", "mix"])
@pytest.mark.parametrize("items", ["words", "digits"])
def test_answers_are_exact(task, items):
    train, held_out = build_task_data.generate(task, 50, 10, 3, 5, items)
    names = set()
    for record in train + held_out:
        question, answer = build_task_data.prompt_and_answer(record)
        name, given = question.split(": ")
        names.add(name)
        parts = given.split(" ") if items == "words" else list(given)
        assert 3 <= len(parts) <= 5 and set(parts) <= set(build_task_data.WORDS + build_task_data.DIGITS)
        expected = {"copy": parts, "reverse": parts[::-1], "sort": sorted(parts)}[name]
        assert answer == (" " if items == "words" else "").join(expected)
    assert names == ({"copy", "reverse", "sort"} if task == "mix" else {task})


def test_words_are_one_piece_each():
    tok = tokenizers.load_tokenizer(builtin_corpus.BUILTIN_TOKENIZER_PATH)
    for word in build_task_data.WORDS:
        assert len(tok.encode(" " + word)) == 1, word
    text = "copy: " + " ".join(build_task_data.WORDS)
    assert tok.encode(text)[-len(build_task_data.WORDS) :] == [
        tok.encode(" " + w)[0] for w in build_task_data.WORDS
    ]


def test_refuses_bad_arguments(capsys):
    with pytest.raises(ValueError, match="distinct prompts"):
        build_task_data.generate("copy", 6000, 100, 4, 4)
    with pytest.raises(ValueError, match="task"):
        build_task_data.generate("add", 10, 10)
    assert build_task_data.main(["--output", "unused", "--train", "9000"]) == 2
    assert "distinct prompts" in capsys.readouterr().err
