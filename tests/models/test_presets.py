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
    # equal graphdefs (hashable, static under jit): engines of one model share compiled programs
    assert again.graphdef == tiny.graphdef and hash(again.graphdef) == hash(tiny.graphdef)


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


def test_tiny_bfloat16_is_close_to_float32(tiny):
    """bf16 logits stay within a bf16 tolerance, and the greedy choice agrees wherever the f32
    top-1 leads the top-2 by more than twice that tolerance (most positions: logits are spread)."""
    prompt = tiny.tokenizer("Hello, world! This is pcjax, a prefix-caching engine.")["input_ids"]
    logits, tokens = greedy(tiny, prompt, 8)
    bf16_logits, _ = greedy(models.load("pcjax-tiny", "bfloat16"), prompt, 1)
    tolerance = 0.06 * logits.std()
    assert np.abs(bf16_logits - logits).max() < tolerance
    top2 = np.sort(logits, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tolerance
    assert clear.mean() > 0.5
    assert (bf16_logits.argmax(-1) == logits.argmax(-1))[clear].all()
    assert 4 < logits.std() < 12 and np.isfinite(logits).all()
    assert len(set(tokens)) > 2  # greedy does not just repeat one token
