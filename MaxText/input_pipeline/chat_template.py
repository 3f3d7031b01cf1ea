"""Chat templates: messages -> text, from the config, the tokenizer's files, or a plain default.

The one renderer that serving (MaxText.serve, /v1/chat/completions) and supervised fine-tuning (`sft`) both
use, so a fine-tuned model is prompted exactly as it was trained. It lives here, below inference and
training, because the import graph points down only.

The template is Jinja (the Hugging Face convention: `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `raise_exception`). config `chat_template` wins; otherwise `chat_template` in a
tokenizer_config.json (or a chat_template.jinja) beside the tokenizer file; otherwise DEFAULT_TEMPLATE, one
"role: content" line per message and "assistant:" to prompt the reply. jinja2 is imported when a template is
built (an optional package: synthetic and built-in pretraining runs do without it).
"""

import functools
import json
import os

from MaxText.config.errors import require

DEFAULT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tokenizer_template(tokenizer_path: str) -> str:
    """The chat template stored beside a tokenizer file, or "" when there is none."""
    directory = os.path.dirname(os.path.abspath(tokenizer_path))
    jinja_file = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    config_file = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            template = json.load(f).get("chat_template", "")
        return template if isinstance(template, str) else ""
    return ""


class ChatTemplate:
    """Renders OpenAI-style messages [{"role", "content"}] into one string."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        jinja2 = require("jinja2", "chat templates (serving, use_sft)")
        sandbox = require("jinja2.sandbox", "chat templates (serving, use_sft)")
        self._error = jinja2.TemplateError
        env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = self._raise
        self.source = source or DEFAULT_TEMPLATE
        self.template = env.from_string(self.source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def _raise(self, message):
        raise self._error(message)

    def render(self, messages: list, add_generation_prompt: bool = True) -> str:
        """The text of `messages`; with add_generation_prompt, followed by what opens the assistant's reply
        (a server prompt), without it the conversation as written (a training record).

        Raises ValueError (one line) when the template rejects the messages (e.g. its raise_exception).
        """
        try:
            return self.template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except self._error as e:
            raise ValueError(f"chat template: {e}") from None


@functools.lru_cache(maxsize=8)
def load_chat_template(config_template: str, tokenizer_path: str) -> ChatTemplate:
    """The model's template: `config_template` (config chat_template) when set, else the tokenizer's, else
    DEFAULT_TEMPLATE. What serving and SFT both call; cached (jinja compiles each template once)."""
    return ChatTemplate(config_template or (tokenizer_template(tokenizer_path) if tokenizer_path else ""))
