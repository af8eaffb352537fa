"""Decoder-only LLMs (Llama, Mistral, Qwen2, Qwen3) in Flax NNX over the paged KV cache.

model = pcjax.models.load("pcjax-small")   # or "smollm2-135m", a .gguf file, an HF directory
logits, kv_cache = pcjax.models.forward(model.graphdef, model.params, tokens, positions,
                                        kv_cache, md, logits_indices=last_rows)
"""

from pcjax.models.builtin import BUILTIN_MODELS
from pcjax.models.config import ARCHITECTURES, ModelConfig
from pcjax.models.loader import LoadedModel, load
from pcjax.models.presets import PRESETS, write_preset
from pcjax.models.tokenizer import build_byte_tokenizer
from pcjax.models.transformer import Transformer, forward

__all__ = [
    "ARCHITECTURES",
    "BUILTIN_MODELS",
    "PRESETS",
    "LoadedModel",
    "ModelConfig",
    "Transformer",
    "build_byte_tokenizer",
    "forward",
    "load",
    "write_preset",
]
