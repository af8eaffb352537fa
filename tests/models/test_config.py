"""ModelConfig parsing from Hugging Face config.json dicts, and its validation errors."""

import dataclasses
import json

import pytest

from pcjax.models import ModelConfig
from pcjax.models.presets import PRESETS
from tests.models.conftest import FAMILIES, GOLDEN

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 100,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}


def golden_config(name: str) -> ModelConfig:
    return ModelConfig.from_hf_config(json.loads((GOLDEN / name / "config.json").read_text()))


def test_llama_defaults():
    cfg = ModelConfig.from_hf_config(LLAMA)
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta) == (4, 16, 10000.0)
    assert cfg.rope_scaling is None and cfg.sliding_window is None
    assert not (cfg.attention_bias or cfg.qk_norm or cfg.tie_word_embeddings)
    assert cfg.family == "llama"


def test_golden_families_parse():
    llama, mistral, qwen2, qwen3 = (golden_config(name) for name in FAMILIES)
    assert (llama.head_dim, llama.num_kv_heads, llama.rope_theta) == (24, 2, 500000.0)
    assert dict(llama.rope_scaling)["factor"] == 8.0
    assert dict(llama.rope_scaling)["original_max_position_embeddings"] == 32
    assert [mistral.layer_window(i) for i in range(2)] == [8, 8]
    assert qwen2.attention_bias and not qwen2.attention_out_bias and qwen2.tie_word_embeddings
    assert qwen3.qk_norm and qwen3.head_dim == 32
    assert [qwen3.layer_window(i) for i in range(2)] == [None, 6]


def test_transformers4_rope_layout():
    hf = LLAMA | {
        "rope_theta": 500000.0,
        "rope_scaling": {
            "type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    cfg = ModelConfig.from_hf_config(hf)
    assert cfg.rope_theta == 500000.0 and dict(cfg.rope_scaling)["factor"] == 8.0


@pytest.mark.parametrize("kind", [None, "default"])
def test_default_rope_accepted(kind):
    cfg = ModelConfig.from_hf_config(LLAMA | {"rope_scaling": kind and {"rope_type": kind}})
    assert cfg.rope_scaling is None


def test_qwen_sliding_window_only_when_enabled():
    qwen2 = LLAMA | {"architectures": ["Qwen2ForCausalLM"], "sliding_window": 4096}
    assert ModelConfig.from_hf_config(qwen2 | {"use_sliding_window": False}).sliding_window is None
    on = ModelConfig.from_hf_config(qwen2 | {"use_sliding_window": True, "max_window_layers": 1})
    assert [on.layer_window(i) for i in range(2)] == [None, 4096]


def test_family_defaults_for_omitted_fields():
    qwen3 = ModelConfig.from_hf_config(LLAMA | {"architectures": ["Qwen3ForCausalLM"]})
    assert qwen3.head_dim == 128  # transformers' Qwen3Config default, not hidden / heads
    mistral = ModelConfig.from_hf_config(LLAMA | {"architectures": ["MistralForCausalLM"]})
    assert mistral.head_dim == 16 and mistral.max_position_embeddings == 131072


def test_model_type_without_architectures():
    cfg = ModelConfig.from_hf_config(
        {k: v for k, v in LLAMA.items() if k != "architectures"} | {"model_type": "qwen3"}
    )
    assert cfg.architecture == "Qwen3ForCausalLM" and cfg.qk_norm


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'GPT2LMHeadModel'"),
        ({"architectures": None, "model_type": "gemma2"}, "unsupported model_type 'gemma2'"),
        ({"hidden_size": None}, "missing the required field 'hidden_size'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope scaling type"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            "llama3 rope scaling is missing",
        ),
        ({"num_key_value_heads": 3}, "multiple of num_kv_heads"),
        ({"hidden_act": "gelu"}, "unsupported hidden_act"),
        ({"mlp_bias": True}, "mlp_bias"),
    ],
)
def test_invalid_configs_name_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf_config(LLAMA | change)


def test_direct_construction_is_validated():
    cfg = ModelConfig.from_hf_config(LLAMA)
    with pytest.raises(ValueError, match="head_dim must be even"):
        dataclasses.replace(cfg, head_dim=15)
    with pytest.raises(ValueError, match="sliding_window"):
        dataclasses.replace(cfg, sliding_window=0)


@pytest.mark.parametrize("name", [*FAMILIES, "small"])
def test_to_hf_config_round_trips(name):
    cfg = PRESETS["pcjax-small"].config if name == "small" else golden_config(name)
    assert ModelConfig.from_hf_config(cfg.to_hf_config()) == cfg


def test_param_counts():
    assert 95e6 < PRESETS["pcjax-small"].config.param_count() < 110e6
    assert PRESETS["pcjax-tiny"].config.param_count() < 200_000
