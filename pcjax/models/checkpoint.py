"""Hugging Face safetensors checkpoints <-> pcjax params.

Reading: a directory holds ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Each file is an 8-byte little-endian header length, a JSON header
``{name: {dtype, shape, data_offsets}}`` and the raw little-endian data; it is read with numpy
directly (bfloat16 through ml_dtypes), one tensor at a time, without torch.

Mapping (weights keep HF's ``[out, in]`` layout; fused ones are HF tensors stacked along the out
axis; ``i`` is the layer):

=========================================  ==========================================  ========
pcjax param                                Hugging Face tensor(s)                       op
=========================================  ==========================================  ========
embed_tokens                               model.embed_tokens.weight                    copy
layers.i.input_layernorm.weight            model.layers.i.input_layernorm.weight        copy
layers.i.self_attn.qkv_proj.weight (/bias) ...self_attn.{q,k,v}_proj.weight (/bias)     concat
layers.i.self_attn.o_proj.weight (/bias)   ...self_attn.o_proj.weight (/bias)           copy
layers.i.self_attn.{q,k}_norm.weight       ...self_attn.{q,k}_norm.weight               copy
layers.i.post_attention_layernorm.weight   ...post_attention_layernorm.weight           copy
layers.i.mlp.gate_up_proj.weight           ...mlp.{gate,up}_proj.weight                 concat
layers.i.mlp.down_proj.weight              ...mlp.down_proj.weight                      copy
norm.weight                                model.norm.weight                            copy
lm_head.weight (untied only)               lm_head.weight                               copy
=========================================  ==========================================  ========

Extra tensors (e.g. ``lm_head.weight`` of a tied model, rotary buffers) are ignored.
"""

import json
import struct
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from pcjax.models.config import ModelConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
}


class CheckpointReader:
    """Random access to the tensors of a (possibly sharded) safetensors checkpoint directory."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.files = checkpoint_files(self.directory)
        self._entries: dict[str, tuple[Path, dict, int]] = {}
        for path in self.files:
            header, data_start = _read_header(path)
            for name, entry in header.items():
                if name != "__metadata__":
                    self._entries[name] = (path, entry, data_start)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """Every tensor name, in file order."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)[1]["shape"])

    def get(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        """Reads tensor `name`, checking it has `expected_shape` (ValueError naming both)."""
        path, entry, data_start = self._entry(name)
        shape = tuple(entry["shape"])
        if shape != tuple(expected_shape):
            raise ValueError(
                f"tensor {name!r} in {path} has shape {list(shape)}, expected "
                f"{list(expected_shape)} for this config"
            )
        dtype = np.dtype(_DTYPES[entry["dtype"]])
        start, end = entry["data_offsets"]
        data = np.fromfile(path, dtype=np.uint8, count=end - start, offset=data_start + start)
        if data.size != end - start:  # the file shrank since its header was checked
            raise ValueError(f"{path} is truncated: tensor {name!r} is incomplete")
        return data.view(dtype.newbyteorder("<")).reshape(shape)

    def _entry(self, name: str):
        if name not in self._entries:
            raise ValueError(f"checkpoint {self.directory} is missing the tensor {name!r}")
        return self._entries[name]


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (ValueError naming what is missing)."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map' object")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        for path in files:
            if not path.is_file():
                raise ValueError(f"shard {path.name} listed in {index} is missing")
        return files
    single = directory / SINGLE_FILE
    if single.is_file():
        return [single]
    raise ValueError(f"no weights in {directory}: expected {SINGLE_FILE} or {INDEX_FILE}")


def read_json(path: Path) -> dict:
    """Parses a JSON file; ValueError naming the file when it is malformed."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"malformed JSON in {path}: {error}") from error


def _read_header(path: Path) -> tuple[dict, int]:
    """(header, data start) of a safetensors file, every entry checked against the file size.

    Raises:
      ValueError: naming the file: too short, a header length past the end, malformed JSON, an
        entry without dtype/shape/offsets, an unsupported dtype, offsets that disagree with the
        shape, or data past the end of the file (truncated).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            raise ValueError(
                f"{path} is truncated or not a safetensors file: its header claims {length} "
                f"bytes, the file has {size}"
            )
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} has a malformed safetensors header: {error}") from error
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a malformed safetensors header: not a JSON object")
    for name, entry in header.items():
        if name != "__metadata__":
            _check_entry(path, name, entry, size - 8 - length)
    return header, 8 + length


def _check_entry(path: Path, name: str, entry, data_size: int) -> None:
    try:
        dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: malformed header entry for tensor {name!r}") from error
    if dtype not in _DTYPES:
        raise ValueError(f"tensor {name!r} in {path} has unsupported dtype {dtype}")
    if not 0 <= start <= end or end - start != count * np.dtype(_DTYPES[dtype]).itemsize:
        raise ValueError(
            f"{path} is corrupt: tensor {name!r} has offsets {[start, end]} for shape {shape}"
        )
    if end > data_size:
        raise ValueError(
            f"{path} is truncated: tensor {name!r} ends at byte {end} of the data, which has "
            f"{data_size}"
        )


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face tensor the model needs, with its HF-layout shape."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, d)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        }
        if cfg.attention_bias:
            for name, size in (("q", q), ("k", kv), ("v", kv)):
                shapes[p + f"self_attn.{name}_proj.bias"] = (size,)
        if cfg.attention_out_bias:
            shapes[p + "self_attn.o_proj.bias"] = (d,)
        if cfg.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (cfg.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (cfg.head_dim,)
    return shapes


# Recipe ops: "copy" (one tensor as is) and "concat" (tensors joined along axis 0, the out axis).


def param_recipes(cfg: ModelConfig) -> dict[str, tuple[str, tuple[str, ...]]]:
    """pcjax param path -> (op, HF tensor names): the table in the module docstring."""
    recipes = {
        "embed_tokens": ("copy", ("model.embed_tokens.weight",)),
        "norm.weight": ("copy", ("model.norm.weight",)),
    }
    if not cfg.tie_word_embeddings:
        recipes["lm_head.weight"] = ("copy", ("lm_head.weight",))
    for i in range(cfg.num_layers):
        recipes |= _layer_recipes(cfg, f"model.layers.{i}.", f"layers.{i}.")
    return recipes


def _layer_recipes(cfg: ModelConfig, hf: str, me: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    attn, mlp = hf + "self_attn.", hf + "mlp."
    qkv = tuple(attn + f"{x}_proj" for x in "qkv")
    recipes = {
        me + "input_layernorm.weight": ("copy", (hf + "input_layernorm.weight",)),
        me + "post_attention_layernorm.weight": ("copy", (hf + "post_attention_layernorm.weight",)),
        me + "self_attn.qkv_proj.weight": ("concat", tuple(n + ".weight" for n in qkv)),
        me + "self_attn.o_proj.weight": ("copy", (attn + "o_proj.weight",)),
        me + "mlp.gate_up_proj.weight": (
            "concat",
            (mlp + "gate_proj.weight", mlp + "up_proj.weight"),
        ),
        me + "mlp.down_proj.weight": ("copy", (mlp + "down_proj.weight",)),
    }
    if cfg.attention_bias:
        recipes[me + "self_attn.qkv_proj.bias"] = ("concat", tuple(n + ".bias" for n in qkv))
    if cfg.attention_out_bias:
        recipes[me + "self_attn.o_proj.bias"] = ("copy", (attn + "o_proj.bias",))
    if cfg.qk_norm:
        recipes[me + "self_attn.q_norm.weight"] = ("copy", (attn + "q_norm.weight",))
        recipes[me + "self_attn.k_norm.weight"] = ("copy", (attn + "k_norm.weight",))
    return recipes


def param_shape(op: str, hf_shapes_of_parts: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The pcjax param shape a recipe builds from HF tensors of these shapes."""
    first = hf_shapes_of_parts[0]
    if op == "copy":
        return first
    return (sum(shape[0] for shape in hf_shapes_of_parts), *first[1:])


def _apply(op: str, tensors: list[np.ndarray]) -> np.ndarray:
    return tensors[0] if op == "copy" else np.concatenate(tensors, axis=0)


def _invert(op: str, array: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    if op == "copy":
        return [array]
    return [np.ascontiguousarray(part) for part in np.split(array, np.cumsum(sizes)[:-1])]


def convert(
    cfg: ModelConfig, get_tensor: Callable[[str, tuple], np.ndarray], dtype
) -> dict[str, np.ndarray]:
    """pcjax param path -> numpy array in `dtype`, built from ``get_tensor(hf_name, shape)``."""
    shapes = hf_shapes(cfg)
    params = {}
    for path, (op, names) in param_recipes(cfg).items():
        tensors = [get_tensor(name, shapes[name]).astype(dtype, copy=False) for name in names]
        params[path] = np.ascontiguousarray(_apply(op, tensors))
    return params


def to_hf(cfg: ModelConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of `convert`: pcjax params (numpy, by dotted path) -> HF tensors."""
    shapes = hf_shapes(cfg)
    tensors = {}
    for path, (op, names) in param_recipes(cfg).items():
        parts = _invert(op, np.asarray(params[path]), [shapes[name][0] for name in names])
        tensors |= dict(zip(names, parts, strict=True))
    return tensors


def save_safetensors(directory: Path, tensors: dict[str, np.ndarray]) -> None:
    """Writes one ``model.safetensors`` that transformers and vLLM load (format metadata "pt")."""
    save_file(tensors, str(Path(directory) / SINGLE_FILE), metadata={"format": "pt"})
