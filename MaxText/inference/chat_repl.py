"""The interactive chat over one DecodeSession: a read-eval-print loop on text streams (MaxText.chat runs it
on the terminal; tests run it on in-memory streams).

Each turn renders the whole conversation (system prompt, earlier user and assistant messages, the new user
message) with the server's chat template, encodes it by the one prompt rule (inference/prompt.py) and runs
it as one Batcher request. No KV cache is kept between turns: every turn prefills the rendered history
again, so a greedy reply is exactly what MaxText.decode, the server or api.generate give for that rendered
prompt (sampled replies use seed decode_sampling_seed + the turn's number, so they vary from turn to turn).
The reply streams through the request's on_event: the batcher's text deltas are decode(all new ids) minus
what was already shown, never a split UTF-8 character, so SentencePiece spacing and multi-byte characters
print as they will read in the end. The shown reply joins the history as an assistant message.

Commands: /reset (clear the history, keep the system prompt), /system TEXT (set it; clears the history),
/help, /exit or /quit (EOF too). Ctrl-C during a reply stops it at the next token (the part shown stays in the
history); at the prompt it drops the line. The conversation goes to `stdout`; the banner, per-reply stats
and notices go to `stderr`, dimmed on a terminal.
"""

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from typing import Optional

import jax

from MaxText.config import Config, ConfigError
from MaxText.inference.batcher import Completion, Request
from MaxText.inference.session import DecodeSession, engine_config, sampling_params
from MaxText.parallel import mesh as mesh_lib

HELP = "/reset clears the history, /system TEXT sets the system prompt (and clears the history), /exit or Ctrl-D quits"
DIM, PLAIN = "\x1b[2m", "\x1b[0m"


def prompt_room(cfg: Config) -> int:
    """The longest rendered conversation (tokens) a turn may prefill: it must fit the largest prefill bucket
    and leave max_decode_steps for the reply within max_target_length. ConfigError when nothing fits, so a
    chat that could never answer fails before the checkpoint loads."""
    engine = engine_config(cfg)
    room = min(max(engine.buckets), engine.max_length - cfg.max_decode_steps)
    if room < 1:
        raise ConfigError(
            f"max_decode_steps={cfg.max_decode_steps} leaves no room for a prompt in "
            f"max_target_length={cfg.max_target_length}; lower max_decode_steps or raise max_target_length"
        )
    return room


@dataclasses.dataclass
class Turn:
    """One reply: the prompt's ids, the reply's tokens and shown text, why it ended ("stop", "length" or
    "interrupted"), seconds to the first token and in all."""

    prompt_ids: list
    tokens: list
    text: str
    finish_reason: Optional[str]
    first_token_s: float
    elapsed_s: float


class ChatRepl:
    """A conversation with the session's model. `history` holds the user and assistant messages after the
    system prompt; `turns` every reply's Turn. On a terminal stdin (sys.stdin, a tty) lines are read with
    input(), so readline edits them; any other stream is read line by line without a prompt."""

    def __init__(self, session: DecodeSession, template, stdin=None, stdout=None, stderr=None, prompt="> "):
        self.session, self.template, self.prompt = session, template, prompt
        self.stdin = stdin or sys.stdin
        self.stdout, self.stderr = stdout or sys.stdout, stderr or sys.stderr
        self.system, self.history, self.turns = "", [], []
        self.room = prompt_room(session.cfg)
        self._interrupted = False
        self.terminal = self.stdin is sys.stdin and _isatty(self.stdin)

    # ---- the loop ----

    def run(self) -> int:
        """Reads and answers lines until /exit or EOF; returns the exit code (0)."""
        while True:
            try:
                line = self._read()
            except EOFError:
                if self.terminal:
                    self.stdout.write("\n")
                return 0
            except KeyboardInterrupt:  # at the prompt: drop the line, as a shell does
                self.stdout.write("\n")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return 0
                continue
            try:
                self.ask(line)
            except KeyboardInterrupt:  # outside the engine call (rendering, printing): nothing to undo
                self.stdout.write("\n")
                self.note("interrupted")

    def command(self, line: str) -> bool:
        """Runs a /command; False when the chat should end."""
        name, _, arg = line.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.history = []
            self.note("history cleared" + (" (system prompt kept)" if self.system else ""))
        elif name == "/system":
            self.system, self.history = arg.strip(), []
            self.note(("system prompt set" if self.system else "system prompt removed") + "; history cleared")
        elif name == "/help":
            self.note(HELP)
        else:
            self.note(f"unknown command {name}: {HELP}")
        return True

    def messages(self) -> list:
        """The conversation as chat messages, the system prompt first when there is one."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history

    def ask(self, text: str) -> Optional[Turn]:
        """Answers one user message, streaming the reply; None (history unchanged, one notice) when the
        conversation no longer fits the context or the template refuses it."""
        user = {"role": "user", "content": text}
        try:
            ids = self.session.encode_prompt(self.template.render(self.messages() + [user]))
        except ValueError as e:
            self.note(str(e))
            return None
        if len(ids) > self.room:
            self.note(self._too_long(len(ids)))
            return None
        max_tokens = self.session.max_tokens_for(len(ids))
        if not self.session.engine.can_insert(len(ids), max_tokens):  # only this chat uses the engine
            self.note(f"the KV page pool cannot hold this turn's {len(ids) + max_tokens} tokens "
                      f"(kv_num_pages={self.session.cfg.kv_num_pages}); /reset or raise kv_num_pages")  # fmt: skip
            return None
        turn = self._generate(ids, max_tokens)
        self.stdout.write("\n")
        self.stdout.flush()
        if turn.text or turn.finish_reason != "interrupted":
            self.history += [user, {"role": "assistant", "content": turn.text}]
        self.turns.append(turn)
        self.note(self._stats(turn))
        return turn

    # ---- output ----

    def note(self, text: str) -> None:
        """One line to stderr (dimmed on a terminal): not part of the conversation."""
        if _isatty(self.stderr):
            text = f"{DIM}{text}{PLAIN}"
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def banner(self, model_id: str, compile_s: float = 0.0) -> None:
        cfg = self.session.cfg
        count = sum(x.size for x in jax.tree.leaves(self.session.params))
        sampling = sampling_params(cfg)
        how = "greedy" if sampling.temperature == 0 else (
            f"{cfg.decode_sampling_strategy} (temperature {sampling.temperature}, top_k {sampling.top_k}, "
            f"top_p {sampling.top_p}, seed {sampling.seed})"
        )  # fmt: skip
        self.note(
            f"chat with {model_id} ({cfg.model_name}, {_count(count)} params) | context "
            f"{self.session.engine.config.max_length} tokens, replies up to {cfg.max_decode_steps}, {how} | "
            f"compiled in {compile_s:.1f}s | /help for commands, /exit or Ctrl-D to quit"
        )

    def _too_long(self, n: int) -> str:
        cfg, config = self.session.cfg, self.session.engine.config
        if max(config.buckets) <= config.max_length - cfg.max_decode_steps:
            limit = f"the longest prompt, max_prefill_predict_length={cfg.max_prefill_predict_length}"
        else:
            limit = f"max_target_length={config.max_length} minus max_decode_steps={cfg.max_decode_steps}"
        return f"context full: the conversation is {n} tokens, a turn fits {self.room} ({limit}); /reset to start over"

    def _stats(self, turn: Turn) -> str:
        n = len(turn.tokens)
        ended = {"length": " | stopped at max_decode_steps", "interrupted": " | interrupted"}
        return (
            f"[{n} tokens | {n / max(turn.elapsed_s, 1e-9):.1f} tokens/s | first token "
            f"{turn.first_token_s * 1e3:.0f} ms | context {len(turn.prompt_ids) + n}/"
            f"{self.session.engine.config.max_length}{ended.get(turn.finish_reason, '')}]"
        )

    # ---- input and generation ----

    def _read(self) -> str:
        if self.terminal:
            return input(self.prompt)
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def _generate(self, ids: list, max_tokens: int) -> Turn:
        """Runs one request through Batcher.complete, writing its text deltas as they come. Ctrl-C only
        sets a flag (a KeyboardInterrupt inside an engine call could lose the donated decode state); the
        next event cancels the request, which frees its slot at the next step."""
        shown, request = [], None

        def on_event(event):
            if self._interrupted:
                self.session.batcher.cancel(request)
            elif event.text:
                shown.append(event.text)
                self.stdout.write(event.text)
                self.stdout.flush()

        sampling = sampling_params(self.session.cfg, len(self.turns))
        request = Request(ids, max_tokens, sampling, on_event=on_event)
        self._interrupted = False
        start = time.perf_counter()
        with self._ctrl_c_stops_reply(), mesh_lib.activate(self.session.mesh, self.session.rules):
            done: Completion = self.session.batcher.complete([request])[0]
        elapsed = time.perf_counter() - start
        reason = "interrupted" if self._interrupted else done.finish_reason
        return Turn(ids, done.tokens, "".join(shown), reason, done.first_token_s or elapsed, elapsed)

    @contextlib.contextmanager
    def _ctrl_c_stops_reply(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return

        def stop(*_):
            self._interrupted = True

        previous = signal.signal(signal.SIGINT, stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _isatty(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
