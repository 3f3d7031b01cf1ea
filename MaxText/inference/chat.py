"""Chat templates: messages -> prompt text, from the config, the tokenizer's files, or a plain default.

The template is Jinja (the Hugging Face convention: `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`). config `chat_template` wins; otherwise `chat_template` in a tokenizer_config.json (or a
chat_template.jinja) beside the tokenizer file; otherwise DEFAULT_TEMPLATE, one "role: content" line per
message and "assistant:" to prompt the reply.
"""

import json
import os

import jinja2
import jinja2.sandbox

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
    """Renders OpenAI-style messages [{"role", "content"}] into one prompt string."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(source or DEFAULT_TEMPLATE)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list) -> str:
        """Raises ValueError when the template rejects the messages."""
        try:
            return self.template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template: {e}") from None


def _raise(message):
    raise jinja2.TemplateError(message)
