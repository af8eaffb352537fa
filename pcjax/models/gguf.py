"""GGUF files (llama.cpp's format) -> `ModelConfig`, pcjax params and a tokenizer, without torch.

Architectures (``general.architecture``): llama, qwen2, qwen3. llama.cpp's converter stores
Mistral (7B) models as llama, without their sliding window (llama.cpp ignores it), so they load
as `LlamaForCausalLM` with full attention, as llama.cpp runs them. Tensors are dequantized to
float32 by `gguf_reader` (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, K-quants, ...) and cast to the
engine's dtype by `checkpoint.convert`, through the Hugging Face names of this table (``i`` is
the layer):

========================  ==========================================
GGUF tensor               Hugging Face tensor
========================  ==========================================
token_embd.weight         model.embed_tokens.weight
output_norm.weight        model.norm.weight
output.weight             lm_head.weight (absent: tied embeddings)
blk.i.attn_norm.weight    model.layers.i.input_layernorm.weight
blk.i.ffn_norm.weight     model.layers.i.post_attention_layernorm.weight
blk.i.attn_{q,k,v}.*      model.layers.i.self_attn.{q,k,v}_proj.*
blk.i.attn_output.*       model.layers.i.self_attn.o_proj.*
blk.i.attn_{q,k}_norm.*   model.layers.i.self_attn.{q,k}_norm.*
blk.i.ffn_{gate,up,down}  model.layers.i.mlp.{gate,up,down}_proj.weight
========================  ==========================================

Q/K row order. llama.cpp's converter permutes the rows of attn_q / attn_k (and their biases) of
llama models for its interleaved rope: within each head, the rows of the first and
the second half (Hugging Face's "rotate half" pairs ``j`` and ``j + H/2``) are interleaved::

    HF rows of a head:      0 1 2 3 | 4 5 6 7        (H = 8)
    GGUF rows of the head:  0 4 1 5 2 6 3 7

`unpermute_rows` undoes it: ``reshape(heads, H/2, 2, ...) -> swap axes 1, 2``. Qwen2/3 files are
stored in Hugging Face order (llama.cpp runs them with its NeoX rope).

Llama 3.1-style rope scaling is stored as a ``rope_freqs.weight`` tensor of per-frequency
divisors; we accept it when it equals the llama3 formula (`pcjax.models.rope`) for the file's
``rope.scaling.factor`` (else its largest divisor) and ``rope.scaling.original_context_length``
(else 8192) with low/high frequency factors 1 and 4, the Llama 3.x values.
"""

from pathlib import Path
from typing import Any

import numpy as np

from pcjax.models import checkpoint
from pcjax.models.config import ModelConfig
from pcjax.models.gguf_reader import GGUFFile
from pcjax.models.gguf_tokenizer import build_gguf_tokenizer
from pcjax.models.rope import inverse_frequencies

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_PERMUTED_QK = ("llama",)
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}


def gguf_tensor_name(hf_name: str) -> str:
    """The GGUF name of a Hugging Face tensor name (the table in the module docstring)."""
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.{i}.{module}.{weight|bias}
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER[module]}.{kind}"


def unpermute_rows(array: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row interleaving (module docstring); `array` is f[rows, ...]."""
    rows = array.shape[0]
    half = rows // num_heads // 2
    heads = array.reshape(num_heads, half, 2, *array.shape[1:])
    return np.ascontiguousarray(heads.swapaxes(1, 2).reshape(array.shape))


def model_config(gguf: GGUFFile) -> ModelConfig:
    """The `ModelConfig` of a GGUF file, from its ``{arch}.*`` metadata and tensor list.

    Raises:
      ValueError: naming the file and an unsupported architecture or option (mixture of
        experts, partial rotary, a rope scaling other than llama3), or a missing key.
    """
    meta, path = gguf.metadata, gguf.path
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{path}: unsupported GGUF architecture {arch!r}; supported: {list(ARCHITECTURES)}"
        )
    get = lambda key, default=None: _scalar(meta.get(f"{arch}.{key}", default), key, path)
    need = lambda key: _required(get(key), f"{arch}.{key}", path)
    if get("expert_count", 0):
        raise ValueError(f"{path}: mixture-of-experts models are not supported")
    hidden, num_heads = need("embedding_length"), need("attention.head_count")
    head_dim = get("attention.key_length") or hidden // num_heads
    if get("rope.dimension_count", head_dim) != head_dim:
        raise ValueError(f"{path}: partial rotary embeddings are not supported")
    tensors = gguf.tensors
    return ModelConfig(
        architecture=ARCHITECTURES[arch],
        vocab_size=int(tensors["token_embd.weight"].shape[0])
        if "token_embd.weight" in tensors
        else need("vocab_size"),
        hidden_size=hidden,
        intermediate_size=need("feed_forward_length"),
        num_layers=need("block_count"),
        num_heads=num_heads,
        num_kv_heads=get("attention.head_count_kv") or num_heads,
        head_dim=head_dim,
        rope_theta=_decimal(get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(gguf, arch, head_dim, get),
        rms_norm_eps=_decimal(get("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        attention_out_bias="blk.0.attn_output.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        max_position_embeddings=get("context_length", 2048),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=eos_token_ids(meta),
    )


def eos_token_ids(meta: dict[str, Any]) -> tuple[int, ...]:
    """The ids that end a generation: eos, then end-of-turn (``eot``) when it differs."""
    ids = [meta.get(f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot")]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def _rope_scaling(gguf: GGUFFile, arch: str, head_dim: int, get):
    kind = get("rope.scaling.type", "none")
    if kind not in ("none", "llama3"):
        raise ValueError(f"{gguf.path}: unsupported rope scaling {kind!r}")
    if "rope_freqs.weight" not in gguf.tensors:
        return None
    divisors = gguf.read("rope_freqs.weight").reshape(-1)
    scaling = {
        "factor": float(get("rope.scaling.factor") or divisors.max()),
        "original_max_position_embeddings": float(
            get("rope.scaling.original_context_length") or 8192
        ),
        **_LLAMA3_ROPE,
    }
    theta = float(get("rope.freq_base", 10000.0))
    base = inverse_frequencies(head_dim, theta)
    expected = base / inverse_frequencies(head_dim, theta, scaling)
    if divisors.shape != expected.shape or not np.allclose(divisors, expected, rtol=1e-3):
        raise ValueError(
            f"{gguf.path}: rope_freqs.weight does not match llama3 rope scaling {scaling}; "
            "other per-frequency rope factors are not supported"
        )
    return tuple(sorted(scaling.items()))


def _decimal(value: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-5, not
    9.99999974e-06): the value the model's config had before the file stored it as f32."""
    return float(str(np.float32(value)))


def _scalar(value, key: str, path: Path):
    """Per-layer arrays (some files list head counts per layer) must be uniform."""
    if isinstance(value, (list, np.ndarray)):
        values = set(np.asarray(value).tolist())
        if len(values) != 1:
            raise ValueError(f"{path}: per-layer values of {key} ({sorted(values)}) unsupported")
        return values.pop()
    return value


def _required(value, key: str, path: Path):
    if value is None:
        raise ValueError(f"{path}: the GGUF metadata has no {key!r}")
    return value


def read_params(gguf: GGUFFile, cfg: ModelConfig, dtype) -> dict[str, np.ndarray]:
    """pcjax params (dotted path -> array in `dtype`) from the file's tensors."""
    permuted = cfg.family in _PERMUTED_QK

    def get(hf_name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        name = gguf_tensor_name(hf_name)
        if name not in gguf.tensors:
            raise ValueError(f"GGUF file {gguf.path} is missing the tensor {name!r}")
        shape = gguf.tensors[name].shape
        if shape != tuple(expected_shape):
            raise ValueError(
                f"tensor {name!r} in {gguf.path} has shape {list(shape)}, expected "
                f"{list(expected_shape)} for this config"
            )
        array = gguf.read(name)
        if permuted and ".q_proj." in hf_name:
            return unpermute_rows(array, cfg.num_heads)
        if permuted and ".k_proj." in hf_name:
            return unpermute_rows(array, cfg.num_kv_heads)
        return array

    return checkpoint.convert(cfg, get, dtype)


def read_gguf(path: Path) -> tuple[ModelConfig, Any]:
    """(config, tokenizer) of a GGUF file, without reading its tensors.

    Raises:
      ValueError: naming the file and the problem.
    """
    with GGUFFile(path) as gguf:
        try:
            cfg = model_config(gguf)
        except ValueError as error:  # ModelConfig's own checks do not know the file
            if str(path) in str(error):
                raise
            raise ValueError(f"{path}: {error}") from error
        tokenizer = build_gguf_tokenizer(gguf.metadata, gguf.path, cfg.max_position_embeddings)
    return cfg, tokenizer
