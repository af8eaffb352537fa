"""Synthetic prompt sets shared by the benchmarks (plain Python + numpy)."""

import numpy as np


def shared_prefix_prompts(
    num_requests: int, prefix_len: int, suffix_len: int, *, token_range: tuple[int, int], seed: int
) -> list[list[int]]:
    """`num_requests` prompts: one random prefix shared by all, then a random suffix each.

    Token ids are drawn uniformly from ``[token_range[0], token_range[1])``; different seeds give
    unrelated prompt sets, so a warm-up pass leaves no hits for the timed pass.
    """
    rng = np.random.default_rng(seed)
    low, high = token_range
    prefix = rng.integers(low, high, prefix_len).tolist()
    return [prefix + rng.integers(low, high, suffix_len).tolist() for _ in range(num_requests)]


def plain_token_range(tokenizer, vocab_size: int) -> tuple[int, int]:
    """A range of ordinary (non-special) token ids to draw random prompts from."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    high = min(vocab_size, len(tokenizer)) if tokenizer is not None else vocab_size
    low = 0
    while low in special:
        low += 1
    while high - 1 in special:
        high -= 1
    return low, high
