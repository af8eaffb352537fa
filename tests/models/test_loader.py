"""load(): errors that name the problem, dtype conversion, the params cache."""

import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from pcjax import models
from tests.models.conftest import GOLDEN, golden_model


@pytest.fixture
def llama_dir(tmp_path):
    return shutil.copytree(GOLDEN / "llama", tmp_path / "llama")


def params_equal(a, b) -> bool:
    return jax.tree.all(jax.tree.map(np.array_equal, a, b))


def test_loaded_model_fields():
    model = golden_model("llama")
    assert model.name.endswith("llama") and model.dtype == "float32"
    assert model.eos_token_ids == (257,)  # generation_config.json lists [257]
    assert model.chat_template and model.tokenizer("ab")["input_ids"] == [256, 97, 98]


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*pcjax-tiny"):
        models.load("no-such-model")


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        models.load("pcjax-tiny", "float16")


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "no config.json in"),
        ("model.safetensors", "expected model.safetensors or model.safetensors.index.json"),
        (("tokenizer.json", "tokenizer_config.json"), "no tokenizer in"),
    ],
)
def test_missing_files(llama_dir, remove, message):
    for name in [remove] if isinstance(remove, str) else remove:
        (llama_dir / name).unlink()
    with pytest.raises(ValueError, match=message):
        models.load(llama_dir)


def test_missing_shard(tmp_path):
    directory = shutil.copytree(GOLDEN / "llama_sharded", tmp_path / "sharded")
    (directory / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ValueError, match="shard model-00002-of-00003.safetensors .* missing"):
        models.load(directory)


def test_malformed_json(llama_dir):
    (llama_dir / "config.json").write_text('{"architectures": [')
    with pytest.raises(ValueError, match="malformed JSON in .*config.json"):
        models.load(llama_dir)


def test_unsupported_architecture(llama_dir):
    config = json.loads((llama_dir / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architecture 'GPTNeoXForCausalLM'"):
        models.load(llama_dir)


def rewrite_tensors(directory, change):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor(llama_dir):
    rewrite_tensors(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match="missing the tensor 'model.layers.1.mlp.up_proj.weight'"):
        models.load(llama_dir)


def test_wrong_tensor_shape(llama_dir):
    name = "model.layers.0.self_attn.k_proj.weight"
    rewrite_tensors(llama_dir, lambda t: t.update({name: t[name][:40]}))
    with pytest.raises(ValueError, match=rf"'{name}' .* shape \[40, 64\], expected \[48, 64\]"):
        models.load(llama_dir)


def test_bfloat16_checkpoint_loads_into_both_dtypes(llama_dir):
    def to_bf16(tensors):
        for name, value in tensors.items():
            tensors[name] = value.astype(ml_dtypes.bfloat16)

    rewrite_tensors(llama_dir, to_bf16)
    as_f32, as_bf16 = models.load(llama_dir), models.load(llama_dir, "bfloat16")
    reference = golden_model("llama", "bfloat16").params  # the f32 checkpoint rounded to bf16
    assert params_equal(as_bf16.params, reference)
    rounded = jax.tree.map(lambda x: x.astype(np.float32), reference)
    assert params_equal(as_f32.params, rounded)


def test_params_cache_restores_bit_exactly_and_invalidates(llama_dir, tmp_path):
    cache = tmp_path / "cache"
    first = models.load(llama_dir, cache_dir=cache)
    entries = list(cache.iterdir())
    assert len(entries) == 1
    second = models.load(llama_dir, cache_dir=cache)  # read from the cache
    assert params_equal(first.params, second.params)
    assert list(cache.iterdir()) == entries
    assert params_equal(second.params, golden_model("llama").params)

    rewrite_tensors(
        llama_dir, lambda t: t.update({"model.norm.weight": t["model.norm.weight"] * 2})
    )
    changed = models.load(llama_dir, cache_dir=cache)
    assert list(cache.iterdir()) != entries and len(list(cache.iterdir())) == 1
    np.testing.assert_array_equal(
        changed.params["norm"]["weight"][...], 2 * first.params["norm"]["weight"][...]
    )


def test_params_cache_for_presets_and_a_damaged_entry(tmp_path, caplog):
    first = models.load("pcjax-tiny", "bfloat16", cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    second = models.load("pcjax-tiny", "bfloat16", cache_dir=tmp_path)
    assert params_equal(first.params, second.params)
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # truncated: rebuilt
    third = models.load("pcjax-tiny", "bfloat16", cache_dir=tmp_path)
    assert "discarding unreadable param cache" in caplog.text
    assert params_equal(first.params, third.params)
    assert list(tmp_path.iterdir()) == [entry] and entry.stat().st_size > 0
