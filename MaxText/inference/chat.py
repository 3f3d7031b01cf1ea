"""Chat templates for serving: the renderer is `MaxText.input_pipeline.chat_template`, shared with supervised
fine-tuning (use_sft) so a model is prompted as it was trained; this module keeps the old import path."""

from MaxText.input_pipeline.chat_template import (  # noqa: F401  (re-exported)
    DEFAULT_TEMPLATE,
    ChatTemplate,
    load_chat_template,
    tokenizer_template,
)

__all__ = ["DEFAULT_TEMPLATE", "ChatTemplate", "load_chat_template", "tokenizer_template"]
