"""Built-in presets: deterministic from their seed, written as real HF checkpoints, robust."""

import json

import jax
import numpy as np
import pytest

from pcjax import models
from pcjax.models.presets import PRESETS, preset_params
from tests.models.paged import greedy


def test_same_seed_same_params_other_seed_other_params():
    preset = PRESETS["pcjax-tiny"]
    first, second = preset_params(preset), preset_params(preset)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    other = preset_params(type(preset)(**{**preset.__dict__, "seed": 1}))
    assert not np.array_equal(first["embed_tokens"], other["embed_tokens"])


def test_load_preset_is_deterministic(tiny):
    again = models.load("pcjax-tiny")
    assert jax.tree.all(jax.tree.map(np.array_equal, tiny.params, again.params))


def test_write_preset_round_trips(tiny, tmp_path):
    directory = models.write_preset("pcjax-tiny", tmp_path / "tiny")
    names = {path.name for path in directory.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert json.loads((directory / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"
    ]
    loaded = models.load(directory)
    assert loaded.config == tiny.config and loaded.eos_token_ids == tiny.eos_token_ids
    assert jax.tree.all(jax.tree.map(np.array_equal, loaded.params, tiny.params))
    text = "Héllo, wörld"
    assert loaded.tokenizer(text)["input_ids"] == tiny.tokenizer(text)["input_ids"]
    assert (
        loaded.tokenizer.decode(tiny.tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    )
    assert loaded.chat_template == tiny.chat_template is not None


def test_unknown_preset_for_write(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'pcjax-huge'"):
        models.write_preset("pcjax-huge", tmp_path)


def test_tiny_greedy_is_robust_to_bfloat16(tiny):
    """Well-separated logits: bf16 rounding does not change 24 greedy tokens."""
    prompt = tiny.tokenizer("Hello, world! This is pcjax.")["input_ids"]
    logits, tokens = greedy(tiny, prompt, 24)
    _, bf16_tokens = greedy(models.load("pcjax-tiny", "bfloat16"), prompt, 24)
    assert tokens == bf16_tokens
    assert len(set(tokens)) > 8  # not stuck repeating one token
    assert 4 < logits.std() < 12 and np.isfinite(logits).all()
