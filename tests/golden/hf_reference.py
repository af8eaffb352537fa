"""Reference outputs from Hugging Face transformers (torch, CPU, float32, eager attention).

Shared by ``make_golden.py`` (run in the torch venv) and the live comparison test (run wherever
torch is importable). Imports only torch, transformers and numpy.
"""

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GenerationConfig


def load_hf_model(directory):
    """The checkpoint in `directory` as a float32 eval-mode torch model (eager attention)."""
    model = AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, attn_implementation="eager", local_files_only=True
    )
    return model.eval()


@torch.no_grad()
def prompt_logits(model, prompt_ids: list[int]) -> np.ndarray:
    """f32[T, V]: the logits of every prompt position."""
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    return model(input_ids=ids).logits[0].float().numpy()


@torch.no_grad()
def greedy_tokens(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """``generate(do_sample=False)``; never stops early (no eos), so exactly max_new_tokens."""
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0
    )
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
    )
    return out[0, len(prompt_ids) :].tolist()
