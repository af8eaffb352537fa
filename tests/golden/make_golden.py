"""Writes the golden Hugging Face references under tests/golden/<name>/ (the MaxText convention).

Run with a Python that has torch + transformers (see make_golden.sh); pcjax is NOT imported (its
byte-level tokenizer module is loaded by file path, it needs only `tokenizers`/`transformers`).

Each <name>/ holds a tiny random checkpoint saved with ``save_pretrained`` (safetensors),
the byte-level tokenizer, generation_config.json, and
  reference.npz   prompt_ids i32[T], logits f32[T, V] (every prompt position), greedy i32[16]
  reference.json  the same ids, the prompt text and the versions that made them.
Weights use initializer_range 0.25, and norm weights / biases are randomized too (transformers
initializes them to ones / zeros, which would hide a mix-up in the weight mapping).
"""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from hf_reference import greedy_tokens, prompt_logits  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog. Pack my box"
NEW_TOKENS = 16
VOCAB = 320
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.25,
    rms_norm_eps=1e-5,
    bos_token_id=256,
    eos_token_id=257,
    pad_token_id=258,
    max_position_embeddings=256,
)
LLAMA3 = dict(
    rope_type="llama3",
    rope_theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)
FAMILIES = {
    # GQA, head_dim 24 != 64 / 4, llama3 rope scaling
    "llama": (LlamaConfig, LlamaForCausalLM, dict(head_dim=24, rope_parameters=LLAMA3), 1),
    # a sliding window of 8 inside a ~57-token sequence
    "mistral": (MistralConfig, MistralForCausalLM, dict(sliding_window=8, head_dim=16), 2),
    # q/k/v bias, tied embeddings
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True), 3),
    # q/k RMSNorm, head_dim 32, a window of 6 on layer 1 only (max_window_layers=1)
    "qwen3": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(head_dim=32, use_sliding_window=True, sliding_window=6, max_window_layers=1),
        4,
    ),
}


def load_tokenizer_module():
    spec = importlib.util.spec_from_file_location(
        "byte_tokenizer", ROOT / "pcjax/models/tokenizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_model(config_cls, model_cls, extra: dict, seed: int):
    torch.manual_seed(seed)
    model = model_cls(config_cls(**COMMON, **extra)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.25 * torch.randn_like(param))
    return model


def write_reference(directory: Path, model, prompt_ids: list[int]) -> None:
    logits = prompt_logits(model, prompt_ids)
    greedy = greedy_tokens(model, prompt_ids, NEW_TOKENS)
    np.savez_compressed(
        directory / "reference.npz",
        prompt_ids=np.array(prompt_ids, np.int32),
        logits=logits.astype(np.float32),
        greedy=np.array(greedy, np.int32),
    )
    meta = {
        "prompt": PROMPT,
        "prompt_ids": prompt_ids,
        "greedy": greedy,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    (directory / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")


def write_family(name: str, tokenizers, shard: bool = False) -> None:
    config_cls, model_cls, extra, seed = FAMILIES["llama" if shard else name]
    directory = HERE / name
    shutil.rmtree(directory, ignore_errors=True)
    model = build_model(config_cls, model_cls, extra, seed)
    model.save_pretrained(directory, max_shard_size="200KB" if shard else "50GB")
    GenerationConfig(bos_token_id=256, eos_token_id=[257], pad_token_id=258).save_pretrained(
        directory
    )
    tokenizers.save_byte_tokenizer(directory, VOCAB)
    prompt_ids = tokenizers.build_byte_tokenizer(VOCAB)(PROMPT)["input_ids"]
    write_reference(directory, model, prompt_ids)
    print(f"{name}: {sorted(p.name for p in directory.iterdir())}")


def main() -> None:
    tokenizers = load_tokenizer_module()
    for name in FAMILIES:
        write_family(name, tokenizers)
    write_family("llama_sharded", tokenizers, shard=True)


if __name__ == "__main__":
    main()
