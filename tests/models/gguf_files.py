"""Writes small GGUF files the way llama.cpp's convert_hf_to_gguf.py does, for the GGUF tests.

The tensor names and the q/k row permutation are spelled out here independently of
`pcjax.models.gguf` (llama.cpp's names; its ``permute``), so a mapping mistake there does not
cancel out in a round trip.
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from pcjax.models.config import ModelConfig
from pcjax.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, _byte_alphabet

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def llama_cpp_name(hf_name: str) -> str | None:
    """llama.cpp's name of a Hugging Face tensor (None: not stored, e.g. a tied lm_head)."""
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in top:
        return top[hf_name]
    if not hf_name.startswith("model.layers."):
        return None
    layer, rest = hf_name.removeprefix("model.layers.").split(".", 1)
    return f"blk.{layer}.{_LAYER_NAMES[rest]}"


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF rotate-half rows -> interleaved pairs."""
    rows = weights.shape[0]
    split = weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
    return split.swapaxes(1, 2).reshape(weights.shape)


MERGED = "Ġt"  # the one merge of the test vocabulary: "Ġ t" (" t"), the last id


def byte_vocab(vocab_size: int) -> tuple[list[str], list[int]]:
    """The presets' byte-level vocabulary as GGUF tokens and token types (1: normal, 3: control),
    with its last reserved id replaced by `MERGED`."""
    specials = ["<s>", "</s>", "<pad>", *(f"<|reserved_{i}|>" for i in range(vocab_size - 260))]
    return _byte_alphabet() + specials + [MERGED], [1] * 256 + [3] * len(specials) + [1]


def write_gguf(
    path: Path,
    cfg: ModelConfig,
    hf_tensors: dict[str, np.ndarray],
    *,
    arch: str,
    qtype=lambda name, array: GGMLQuantizationType.F32,
    rope_freqs: np.ndarray | None = None,
    pre: str = "default",
    extra: dict | None = None,
) -> Path:
    """A GGUF of `hf_tensors` (HF names) with `arch`'s metadata from `cfg`.

    ``qtype(gguf_name, array)`` picks each tensor's storage type (F32, F16, BF16 or a type
    gguf can quantize); ``extra`` adds or overrides metadata keys (str/int/float/bool values).
    """
    writer = GGUFWriter(str(path), arch)
    _add_metadata(writer, cfg, arch, pre, extra or {})
    permuted = arch == "llama"
    for hf_name, array in hf_tensors.items():
        name = llama_cpp_name(hf_name)
        if name is None or (name == "output.weight" and cfg.tie_word_embeddings):
            continue
        array = np.asarray(array, np.float32)
        if permuted and name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = cfg.num_heads if ".attn_q." in name else cfg.num_kv_heads
            array = permute(array, heads)
        _add_tensor(writer, name, array, qtype(name, array))
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tensor(writer: GGUFWriter, name: str, array: np.ndarray, qtype) -> None:
    if qtype == GGMLQuantizationType.F32:
        writer.add_tensor(name, array)
    elif qtype == GGMLQuantizationType.F16:
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, quantize(array, qtype), raw_dtype=qtype)  # shape from bytes


def _add_metadata(writer: GGUFWriter, cfg: ModelConfig, arch: str, pre: str, extra: dict) -> None:
    tokens, types = byte_vocab(cfg.vocab_size)
    fields = {
        f"{arch}.block_count": cfg.num_layers,
        f"{arch}.context_length": cfg.max_position_embeddings,
        f"{arch}.embedding_length": cfg.hidden_size,
        f"{arch}.feed_forward_length": cfg.intermediate_size,
        f"{arch}.attention.head_count": cfg.num_heads,
        f"{arch}.attention.head_count_kv": cfg.num_kv_heads,
        f"{arch}.attention.key_length": cfg.head_dim,
        f"{arch}.attention.value_length": cfg.head_dim,
        f"{arch}.rope.dimension_count": cfg.head_dim,
        f"{arch}.rope.freq_base": float(cfg.rope_theta),
        f"{arch}.attention.layer_norm_rms_epsilon": float(cfg.rms_norm_eps),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.bos_token_id": BOS_ID,
        "tokenizer.ggml.eos_token_id": EOS_ID,
        "tokenizer.ggml.padding_token_id": PAD_ID,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    } | extra
    for key, value in fields.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ t"])
