"""A tiny stand-in for the engine: runs a model over the paged KV cache, step by step.

Sequences get random, non-contiguous page tables (page 0, the null page, is never handed out), so
the model is exercised through the same slot_mapping / page_table indirection the engine uses.
Unused pages are NaN-filled, so a read of a page that is not the sequence's shows up at once.

Tests compile at XLA's optimization level 0 (`TEST_COMPILER_OPTIONS`): it halves compile time,
which dominates these tiny models' test time; the numerics are the same up to rounding.
"""

import dataclasses
import functools

import jax
import numpy as np

from pcjax.cache.kv_pages import allocate_kv_cache
from pcjax.kernels import AttentionMetadata
from pcjax.models import forward

TEST_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One sequence's part of a step: `tokens` computed after `num_cached` tokens already in KV."""

    seq: int
    tokens: tuple[int, ...]
    num_cached: int


class PagedRunner:
    """Owns a KV cache and each sequence's random page table; `step` runs one jitted forward."""

    def __init__(
        self,
        model,
        *,
        num_seqs=2,
        max_len=128,
        page_size=4,
        seed=0,
        attention_impl="reference",
        fill_value=float("nan"),
    ):
        cfg = model.config
        self.model, self.page_size = model, page_size
        pages_per_seq = -(-max_len // page_size)
        rng = np.random.default_rng(seed)
        pages = rng.permutation(np.arange(1, num_seqs * pages_per_seq + 1))
        self.page_tables = pages.reshape(num_seqs, pages_per_seq).astype(np.int32)  # i32[B, M]
        self.kv = allocate_kv_cache(
            cfg.num_layers,
            num_seqs * pages_per_seq + 1,
            page_size,
            cfg.num_kv_heads,
            cfg.head_dim,
            model.dtype,
            fill_value=fill_value,
        )
        self._forward = jax.jit(
            functools.partial(forward, model.graphdef, attention_impl=attention_impl),
            donate_argnums=(3,),
            compiler_options=TEST_COMPILER_OPTIONS,
        )

    def step(self, chunks: list[Chunk], *, all_logits=False, pad_tokens=0) -> np.ndarray:
        """Runs one step; returns f32 logits of every token, or of each chunk's last token."""
        tokens, positions, slots, cu = [], [], [], [0]
        kv_lens = np.zeros(len(self.page_tables), np.int32)
        order = sorted(chunks, key=lambda c: c.seq)
        for chunk in order:
            for i, token in enumerate(chunk.tokens):
                pos = chunk.num_cached + i
                tokens.append(token)
                positions.append(pos)
                page = self.page_tables[chunk.seq, pos // self.page_size]
                slots.append(page * self.page_size + pos % self.page_size)
            kv_lens[chunk.seq] = chunk.num_cached + len(chunk.tokens)
        md, last = self._metadata(order, cu, tokens, kv_lens, pad_tokens)
        padding = [0] * pad_tokens
        arrays = [np.array(x + padding, np.int32) for x in (tokens, positions, slots)]
        md = dataclasses.replace(md, slot_mapping=arrays[2])
        indices = None if all_logits else np.array(last, np.int32)
        logits, self.kv = self._forward(
            self.model.params, arrays[0], arrays[1], self.kv, md, logits_indices=indices
        )
        return np.asarray(logits)

    def _metadata(self, order, cu, tokens, kv_lens, pad_tokens):
        """Per-sequence query offsets over ALL sequences (idle ones have q_len 0)."""
        q_lens = np.zeros(len(self.page_tables), np.int32)
        for chunk in order:
            q_lens[chunk.seq] = len(chunk.tokens)
        cu_q_lens = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        last = [cu_q_lens[c.seq + 1] - 1 for c in order]
        md = AttentionMetadata(
            slot_mapping=np.zeros(len(tokens) + pad_tokens, np.int32),
            page_table=self.page_tables,
            kv_lens=kv_lens,
            cu_q_lens=cu_q_lens,
            max_q_len=int(max(q_lens.max(), 1)),
        )
        return md, last


def greedy(model, prompt: list[int], num_new: int, *, chunk_size=None, **runner_kwargs):
    """Prefill `prompt` (in chunks of `chunk_size` if given), then decode `num_new` tokens.

    Returns (f32[len(prompt), V] logits of every prompt position, the greedy tokens).
    """
    runner = PagedRunner(model, num_seqs=1, max_len=len(prompt) + num_new, **runner_kwargs)
    chunk_size = chunk_size or len(prompt)
    rows = []
    for start in range(0, len(prompt), chunk_size):
        part = tuple(prompt[start : start + chunk_size])
        rows.append(runner.step([Chunk(0, part, start)], all_logits=True))
    prompt_logits = np.concatenate(rows)
    out = [int(prompt_logits[-1].argmax())]
    while len(out) < num_new:
        logits = runner.step([Chunk(0, (out[-1],), len(prompt) + len(out) - 1)])
        out.append(int(logits[0].argmax()))
    return prompt_logits, out
