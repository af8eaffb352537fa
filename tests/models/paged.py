"""A tiny stand-in for the engine: runs a model over the paged KV cache, step by step.

Sequences get random, non-contiguous page tables (page 0, the null page, is never handed out), so
the model is exercised through the same slot_mapping / page_table indirection the engine uses.
Unused pages are NaN-filled, so a read of a page that is not the sequence's shows up at once.
Steps are padded to power-of-two token buckets (padding writes into the null page) and share one
jitted forward, so tests of the same model reuse compilations.

Tests compile at XLA's optimization level 0 (`TEST_COMPILER_OPTIONS`): it halves compile time,
which dominates these tiny models' test time; the numerics are the same up to rounding. For a
real model (smollm2-135m) level 0 is slower to compile and to run: pass ``optimize=True``.
"""

import dataclasses

import jax
import numpy as np

from pcjax.cache.kv_pages import allocate_kv_cache
from pcjax.kernels import AttentionMetadata
from pcjax.models import forward

TEST_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
_jit = lambda **options: jax.jit(
    forward,
    static_argnums=0,
    static_argnames="attention_impl",
    donate_argnames="kv_cache",
    **options,
)
_forward = _jit(compiler_options=TEST_COMPILER_OPTIONS)
_forward_optimized = _jit()  # real models (30 layers): compiles and runs faster than at level 0


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One sequence's part of a step: `tokens` computed after `num_cached` tokens already in KV."""

    seq: int
    tokens: tuple[int, ...]
    num_cached: int


def _bucket(n: int, smallest: int = 1) -> int:
    return max(smallest, 1 << (n - 1).bit_length())


class PagedRunner:
    """Owns a KV cache and each sequence's random page table; `step` runs one forward."""

    def __init__(
        self,
        model,
        *,
        num_seqs=1,
        max_len=128,
        page_size=4,
        seed=0,
        attention_impl="reference",
        optimize=False,
    ):
        cfg = model.config
        self.model, self.page_size, self.attention_impl = model, page_size, attention_impl
        self._forward = _forward_optimized if optimize else _forward
        pages_per_seq = -(-max_len // page_size)
        pages = np.random.default_rng(seed).permutation(np.arange(1, num_seqs * pages_per_seq + 1))
        self.page_tables = pages.reshape(num_seqs, pages_per_seq).astype(np.int32)  # i32[B, M]
        num_pages = num_seqs * pages_per_seq + 1
        self.kv = allocate_kv_cache(
            cfg.num_layers,
            num_pages,
            page_size,
            cfg.num_kv_heads,
            cfg.head_dim,
            model.dtype,
            fill_value=float("nan"),
        )

    def step(self, chunks: list[Chunk], *, all_logits=False) -> np.ndarray:
        """Runs one step; returns f32 logits of every real token, or of each chunk's last token
        (in `chunks` order)."""
        by_seq = {chunk.seq: chunk for chunk in chunks}
        q_lens = np.array(
            [len(by_seq[b].tokens) if b in by_seq else 0 for b in range(len(self.page_tables))],
            np.int32,
        )
        cu_q_lens = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        tokens, positions, slots = self._flatten([by_seq[b] for b in sorted(by_seq)])
        num_real, padded = len(tokens), _bucket(len(tokens), 8)
        pad = lambda x: np.array(x + [0] * (padded - num_real), np.int32)
        kv_lens = np.array(
            [
                by_seq[b].num_cached + q_lens[b] if b in by_seq else 0
                for b in range(len(self.page_tables))
            ],
            np.int32,
        )
        md = AttentionMetadata(
            slot_mapping=pad(slots),
            page_table=self.page_tables,
            kv_lens=kv_lens,
            cu_q_lens=cu_q_lens,
            max_q_len=_bucket(int(q_lens.max())),
        )
        last = np.array([cu_q_lens[c.seq + 1] - 1 for c in chunks], np.int32)
        logits, self.kv = self._forward(
            self.model.graphdef,
            self.model.params,
            pad(tokens),
            pad(positions),
            self.kv,
            md,
            logits_indices=None if all_logits else last,
            attention_impl=self.attention_impl,
        )
        return np.asarray(logits)[:num_real] if all_logits else np.asarray(logits)

    def _flatten(self, chunks):
        tokens, positions, slots = [], [], []
        for chunk in chunks:
            for i, token in enumerate(chunk.tokens):
                pos = chunk.num_cached + i
                page = self.page_tables[chunk.seq, pos // self.page_size]
                tokens.append(token)
                positions.append(pos)
                slots.append(int(page) * self.page_size + pos % self.page_size)
        return tokens, positions, slots


def greedy(model, prompt: list[int], num_new: int, *, chunk_size=None, **runner_kwargs):
    """Prefill `prompt` (in chunks of `chunk_size` if given), then decode `num_new` tokens.

    Returns (f32[len(prompt), V] logits of every prompt position, the greedy tokens).
    """
    runner = PagedRunner(model, **runner_kwargs)
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
