"""MaxText.chat: the REPL on in-memory streams (history, commands, replies equal the session's for the same
rendered prompt, context overflow, Ctrl-C leaves the engine usable) and once on a pseudo-terminal."""

import io
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from MaxText import chat, paths
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint
from MaxText.config import load_config
from MaxText.inference.chat_repl import DIM, ChatRepl
from MaxText.inference.session import DecodeSession
from MaxText.input_pipeline.chat_template import load_chat_template
from MaxText.tests.helpers import BASE_YML, save_random_params

MODEL = [
    "base_emb_dim=64", "base_mlp_dim=128", "base_num_query_heads=2", "base_num_kv_heads=2", "head_dim=32",
    "base_num_decoder_layers=2",
]  # fmt: skip
CHAT = ["decode_sampling_strategy=greedy", "max_decode_steps=8", "max_target_length=64",
        "max_prefill_predict_length=48", "decode_batch_size=1"]  # fmt: skip
ROOM = 48  # the largest prompt bucket (64 - 8 leaves more)


@pytest.fixture(scope="module", name="ckpt")
def _ckpt(tmp_path_factory):
    return save_random_params(str(tmp_path_factory.mktemp("chat") / "ckpt"), load_config([BASE_YML, *MODEL]))


@pytest.fixture(scope="module", name="session")
def _session(ckpt):
    cfg, path = load_config_from_checkpoint([BASE_YML, f"load_parameters_path={ckpt}", *CHAT], True)
    session = DecodeSession.from_checkpoint(cfg, path)
    session.warmup()
    return session


class Screen(io.StringIO):
    """An output stream that keeps each write (a streamed reply arrives in several)."""

    def __init__(self, on_write=lambda text: None):
        super().__init__()
        self.writes, self.on_write = [], on_write

    def write(self, s):
        self.writes.append(s)
        self.on_write(s)
        return super().write(s)


def _chat(session, lines: str, out=None):
    """Runs the REPL over `lines`; returns (repl, stdout text, stderr text)."""
    out, err = out or Screen(), io.StringIO()
    repl = ChatRepl(session, load_chat_template("", session.cfg.tokenizer_path), io.StringIO(lines), out, err)
    assert repl.run() == 0
    return repl, out.getvalue(), err.getvalue()


def _expect_session_reply(session, repl, turn, messages):
    """The turn prefilled `messages` rendered by the template and replied what the session gives for it."""
    text = repl.template.render(messages)
    assert turn.prompt_ids == session.encode_prompt(text)
    want = session.generate_text([text])
    assert turn.tokens == want["tokens"][0] and turn.text == want["texts"][0]


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


def test_history_commands_and_replies_equal_the_session(session):
    lines = "hello\n\nthere\n/system be brief\nhi\n/bogus\n/reset\nhi\n/exit\nnever read\n"
    repl, out, err = _chat(session, lines)
    assert len(repl.turns) == 4, err
    r0, _, r2, r3 = (t.text for t in repl.turns)
    user, reply = _user, _assistant
    system = {"role": "system", "content": "be brief"}
    expected = [
        [user("hello")],
        [user("hello"), reply(r0), user("there")],  # the history grows by the assistant's reply
        [system, user("hi")],  # /system set the system prompt and cleared the history
        [system, user("hi")],  # /reset cleared the history and kept the system prompt
    ]
    for turn, messages in zip(repl.turns, expected):
        _expect_session_reply(session, repl, turn, messages)
    assert r2 == r3 and r0  # same prompt, same greedy reply; the random model says something
    assert repl.history == [user("hi"), reply(r3)] and repl.system == "be brief"
    assert out == "".join(t.text + "\n" for t in repl.turns)  # stdout holds the conversation only
    deltas = [w for w in repl.stdout.writes if w != "\n"]
    assert len(deltas) > len(repl.turns)  # replies stream in several pieces, not one write each
    assert "unknown command /bogus" in err and err.count("tokens/s") == 4
    assert session.batcher.idle()


def test_context_overflow_keeps_the_history_and_goes_on(session):
    long_message = " ".join(["word"] * 40)
    repl, _, err = _chat(session, f"hello\n{long_message}\nthere\n")
    assert len(repl.turns) == 2
    history = [_user("hello"), _assistant(repl.turns[0].text)]
    n = len(session.encode_prompt(repl.template.render(history + [_user(long_message)])))
    notice = [line for line in err.splitlines() if line.startswith("context full")]
    assert len(notice) == 1 and f"is {n} tokens, a turn fits {ROOM}" in notice[0] and "/reset" in notice[0]
    assert "max_prefill_predict_length=48" in notice[0]
    _expect_session_reply(session, repl, repl.turns[1], history + [_user("there")])


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_ctrl_c_stops_the_reply_and_the_engine_stays_usable(session):
    sent = []

    def ctrl_c_after_the_first_text(text):
        if text != "\n" and not sent:
            sent.append(text)
            os.kill(os.getpid(), signal.SIGINT)  # what the terminal sends on Ctrl-C

    before = signal.getsignal(signal.SIGINT)
    lines = "hello\nmore\n/reset\nhello\n"
    repl, _, err = _chat(session, lines, Screen(ctrl_c_after_the_first_text))
    assert len(repl.turns) == 3
    stopped, more, full = repl.turns[0], repl.turns[1], repl.turns[2]
    assert stopped.finish_reason == "interrupted" and stopped.text == sent[0] and "interrupted" in err
    # The part shown stays in the history; the engine answers the next turns as if nothing had happened.
    _expect_session_reply(session, repl, more, [_user("hello"), _assistant(stopped.text), _user("more")])
    _expect_session_reply(session, repl, full, [_user("hello")])
    assert full.text.startswith(stopped.text) and len(full.text) > len(stopped.text)
    assert session.batcher.idle()
    assert signal.getsignal(signal.SIGINT) is before  # the chat's handler is gone again


def test_bad_config_exits_2_with_one_line(ckpt, capsys):
    for argv, message in [
        ([BASE_YML, f"load_parameters_path={ckpt}", "max_decode_stpes=4"], "did you mean"),
        (
            [BASE_YML, f"load_parameters_path={ckpt}", "max_target_length=16", "max_decode_steps=16"],
            "no room",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            chat.main(argv)
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("config error:") and message in lines[0], lines


def _read_until(fd, seen: str, *markers: str, timeout: float = 120) -> str:
    """Reads the terminal until `markers` occur in this order after what was `seen`; returns all read."""
    deadline, text = time.time() + timeout, seen

    def found() -> bool:
        at = len(seen)
        for marker in markers:
            at = text.find(marker, at)
            if at < 0:
                return False
            at += len(marker)
        return True

    while not found():
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not ready:
            pytest.fail(f"no {markers} on the terminal in {timeout} s; it shows:\n{text}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            pytest.fail(f"the chat ended before {markers}; the terminal shows:\n{text}")
        text += chunk.decode("utf-8", "replace").replace("\r\n", "\n")
    return text


def test_chat_on_a_terminal(ckpt):
    main, child = os.openpty()
    env = dict(os.environ, PYTHONPATH=paths.REPO_ROOT, XLA_FLAGS="", TERM="dumb")  # one CPU device
    cmd = [sys.executable, "-m", "MaxText.chat", BASE_YML, f"load_parameters_path={ckpt}", *CHAT]
    with subprocess.Popen(cmd, stdin=child, stdout=child, stderr=child, cwd=paths.REPO_ROOT, env=env) as proc:
        os.close(child)
        try:
            screen = _read_until(main, "", "> ")
            assert "chat with ckpt" in screen and "Ctrl-D" in screen
            proc.send_signal(signal.SIGINT)  # Ctrl-C at the prompt drops the line, the chat goes on
            screen = _read_until(main, screen, "> ")
            os.write(main, b"hello\n")
            screen = _read_until(main, screen, "hello\n", "tokens/s", "\n> ")
            reply = screen.split("hello\n")[-1].split(DIM)[0]
            assert reply.strip() and reply.endswith("\n"), screen  # the reply, then the dimmed stats line
            os.write(main, b"/exit\n")
            assert proc.wait(timeout=60) == 0, screen
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(main)
