"""The declarations (config/schema.py) and configs/base.yml agree key by key, and each Enum of allowed values
is exactly what its implementation implements."""

import re

import pytest
import yaml

from MaxText.config import choices, validate
from MaxText.config.derived import MODEL_KEYS, ModelConfig, model_config
from MaxText.config.schema import SETTINGS, Section
from MaxText.tests.helpers import BASE_YML

_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(.*)$")
_SECTION = re.compile(r"^# ---- (.+) ----$")


def _comment(rest: str) -> str:
    """The text after the first ' #' outside quotes of a `key: value  # comment` line."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] == " "):
            return rest[i + 1 :].strip()
    return ""


def base_yml_lines() -> list:
    """[(key, section title, comment)] of base.yml's top-level keys, in file order."""
    out, section = [], None
    with open(BASE_YML, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if m := _SECTION.match(line):
                section = m.group(1)
            elif m := _KEY.match(line):
                out.append((m.group(1), section, _comment(m.group(2))))
    return out


def test_base_yml_lists_every_declaration_in_order_with_its_section_and_help():
    lines = base_yml_lines()
    assert [key for key, _, _ in lines] == list(SETTINGS)
    for key, section, comment in lines:
        assert section == SETTINGS[key].section, key
        assert comment == SETTINGS[key].help, key
    assert [s.value for s in Section] == list(dict.fromkeys(section for _, section, _ in lines))


def test_base_yml_values_are_the_declared_defaults():
    with open(BASE_YML, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    for key, s in SETTINGS.items():
        value = validate.coerce(key, values[key], from_cli=False, source="base.yml")
        assert value == s.default and type(value) is s.type, key
        validate.check_field(key, s.default)


def test_model_config_and_saved_keys_come_from_the_declarations(base_yml):
    from MaxText.config import load_config

    cfg = load_config([base_yml, "base_emb_dim=48", "mlp_activations=[gelu,linear]"])
    mcfg = model_config(cfg)
    assert isinstance(mcfg, ModelConfig) and hash(mcfg)
    assert mcfg.emb_dim == 48 and mcfg.mlp_activations == ("gelu", "linear")
    for name, s in SETTINGS.items():
        if s.model:
            assert getattr(mcfg, s.model) == validate_frozen(getattr(cfg, name)), name
    assert MODEL_KEYS == tuple(k for k, s in SETTINGS.items() if s.saved)
    assert {"decoder_block", "tokenizer_path", "base_emb_dim"} <= set(MODEL_KEYS)
    assert "learning_rate" not in MODEL_KEYS and "attention" not in MODEL_KEYS


def validate_frozen(value):
    return tuple(value) if isinstance(value, list) else value


def _tables():
    from MaxText.layers import common, linears, lora, normalizations, remat

    return [
        (choices.Activation, linears.ACTIVATIONS),
        (choices.DType, common.DTYPES),
        (choices.Precision, common.PRECISIONS),
        (choices.NormType, normalizations.NORMS),
        (choices.RematPolicy, remat.NAMES),
        (choices.LoraTarget, lora.PEFT_MODULES),
    ]


@pytest.mark.parametrize("index", range(6))
def test_each_enum_is_what_its_implementation_implements(index):
    enum_cls, table = _tables()[index]
    assert set(table) == set(enum_cls)


def test_a_wrong_choice_names_the_allowed_values(base_yml):
    from MaxText.config import ConfigError, load_config

    with pytest.raises(
        ConfigError, match=r"normalization_type='rmsnrm': expected one of 'rmsnorm', 'layernorm'"
    ):
        load_config([base_yml, "normalization_type=rmsnrm"])
    with pytest.raises(ConfigError, match="did you mean 'gelu_tanh'"):
        load_config([base_yml, "mlp_activations=[gelu_tnh,linear]"])


def test_the_attention_setting_is_what_kernel_selection_reads():
    from MaxText.kernels import plan

    assert set(plan.ATTEND_KERNELS) | set(plan.TABLE_SETTINGS) == set(choices.AttentionKernel)
