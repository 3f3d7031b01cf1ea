"""Prompt text -> token ids: one rule for every entry point (api.load, MaxText.decode, the server, chat).

The rule: a prompt starts with BOS when the config's `add_bos` is true (and the tokenizer has a BOS), and
never ends with EOS. Why the config key and not the tokenizer's or family's default: `add_bos` is saved in
every checkpoint's meta and applies as an overlay when the checkpoint loads (command line > checkpoint >
base.yml). For a training run it is what the input pipeline put before every document ("Prepend BOS to
each document", base.yml), so the model saw BOS at the start of every text; for a converted Hugging Face
checkpoint the converter records the tokenizer's default there (what its files state, else the family's
`add_bos_eos`, docs/checkpoints.md). Either way it says how a text the model was taught to continue
begins, and the family default reaches prompts through it. `add_eos` is not used: a prompt is the start of
a document the model continues, and EOS would tell it the document has ended (a training run's
add_eos=true marks document ends, not prompts). A per-call `add_bos`/`add_eos` (api) overrides both.
"""

import numpy as np

from MaxText.input_pipeline import tokenizers
from MaxText.models import registry


class PromptTokenizer:
    """The model's tokenizer plus the prompt rule above.

    encode(text) -> list[int] (BOS first when add_bos), decode(ids) -> str (control ids skipped).
    `raw` is the underlying MaxText.input_pipeline.tokenizers.Tokenizer.
    """

    def __init__(self, tokenizer, add_bos: bool, add_eos: bool = False):
        self.raw, self.add_bos, self.add_eos = tokenizer, bool(add_bos), bool(add_eos)

    @classmethod
    def from_config(cls, cfg, add_bos: bool | None = None, add_eos: bool | None = None) -> "PromptTokenizer":
        """Loads cfg.tokenizer_path (with the family's BOS/EOS defaults, for `raw`); add_bos/add_eos None
        follow the rule (cfg.add_bos, no EOS), a bool overrides it."""
        raw = tokenizers.load_tokenizer(cfg.tokenizer_path, registry.family(cfg.decoder_block).add_bos_eos)
        return cls(raw, cfg.add_bos if add_bos is None else add_bos, bool(add_eos))

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None) -> list:
        """Ids of `text` as a prompt; a bool add_bos/add_eos overrides this tokenizer's setting."""
        return self.raw.encode_with_special_tokens(
            text,
            add_bos=self.add_bos if add_bos is None else add_bos,
            add_eos=self.add_eos if add_eos is None else add_eos,
        )

    def decode(self, ids) -> str:
        return self.raw.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    @property
    def bos_id(self) -> int:
        return self.raw.bos_id

    @property
    def eos_id(self) -> int:
        return self.raw.eos_id

    @property
    def pad_id(self) -> int:
        return self.raw.pad_id

    @property
    def vocab_size(self) -> int:
        return self.raw.vocab_size
