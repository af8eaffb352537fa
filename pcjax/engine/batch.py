"""Turns a scheduled step into the padded arrays of one jitted call (host, numpy only).

Shapes are bucketed (`bucket`) so that a handful of programs serve every step, and steady decode
(same number of sequences, contexts growing inside one page-count bucket) never recompiles:

====================  =====================================  =======================
array                 shape                                   padding
====================  =====================================  =======================
tokens, positions     i32[T]    T = token_bucket(total tokens) 0
slot_mapping          i32[T]                                  slot 0 of the null page
page_table            i32[B, M] B = bucket(sequences),        null page 0
                                M = bucket(most pages)
kv_lens               i32[B]                                  0
cu_q_lens             i32[B+1]                                repeats the last offset
logits_indices        i32[B]    last token of each sequence   0 (its sample is unused)
====================  =====================================  =======================

Example (P = 4): sequence A computes tokens 6-8 of its 9 (pages [5, 2, 9]) and sequence B decodes
its token 4 (pages [3, 7]): tokens [a6 a7 a8 b4 pad...], positions [6 7 8 4 0...],
slot_mapping [2*4+2, 2*4+3, 9*4+0, 7*4+0, 0...], kv_lens [9, 5], cu_q_lens [0, 3, 4],
logits_indices [2, 3].
"""

import dataclasses

import numpy as np

from pcjax.engine.request import Request
from pcjax.engine.scheduler import ScheduledStep
from pcjax.sampling import BANNED_PAD, MAX_LOGPROBS

PENDING_TOKEN = -1  # an input token sampled by the step in flight (taken on device, steps.py)
TOKEN_STEP = 128  # Q: powers of two up to 128, then multiples of 128
PAGE_STEP = 16  # M: powers of two up to 16 pages, then multiples of 16
TOKEN_BUCKETS_PER_OCTAVE = 8  # T above 16: at most 12.5% padding


def token_bucket(n: int, minimum: int = 8) -> int:
    """Rounds a step's token count T up: to a power of two (>= minimum) up to 16, then to one of
    `TOKEN_BUCKETS_PER_OCTAVE` evenly spaced sizes per octave (..., 64, 72, 80, ..., 128, 144, ...,
    512, 576, 640, ...).

    T sets the cost of every matmul of a step, so its padding is kept small: a 71-token step
    (a 64-token chunk plus 7 decodes) runs at 72, not 128, and a 576-token prefill at 576.
    """
    n = max(n, minimum)
    if n <= 16:
        return 1 << (n - 1).bit_length()
    grain = (1 << ((n - 1).bit_length() - 1)) // TOKEN_BUCKETS_PER_OCTAVE
    return -(-n // grain) * grain


def bucket(n: int, minimum: int = 1, step: int | None = None) -> int:
    """Rounds n up: to a power of two (>= minimum) while below `step`, then to a multiple of it.

    Powers of two keep the number of compiled shapes small; above `step`, multiples bound the
    padding (a 576-token prefill pads to 640, not 1024).
    """
    n = max(n, minimum)
    if step is not None and n > step:
        return -(-n // step) * step
    return 1 << (n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class StepArrays:
    """Host arrays of one step (see the module table), plus per-sequence sampling settings."""

    tokens: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    page_table: np.ndarray
    kv_lens: np.ndarray
    cu_q_lens: np.ndarray
    logits_indices: np.ndarray
    max_q_len: int
    temperature: np.ndarray  # f32[B]
    top_k: np.ndarray  # i32[B]
    top_p: np.ndarray  # f32[B]
    seeds: np.ndarray  # u32[B]
    sample_steps: np.ndarray  # i32[B]
    banned: np.ndarray  # i32[B, NB]: stop tokens of rows short of min_tokens, else BANNED_PAD
    num_logprobs: int  # NL: 0, or MAX_LOGPROBS when a row wants log-probabilities (static)
    replicas: np.ndarray  # i32[B]: each row's data-parallel replica (pcjax.parallel), 0 if one


def build_step_arrays(step: ScheduledStep, page_size: int, max_pages_per_seq: int) -> StepArrays:
    """Lays out the step's tokens flat, sequence after sequence, and pads every dimension."""
    num_seqs = bucket(len(step.entries))
    num_tokens = token_bucket(step.num_tokens)
    most_pages = max(len(req.pages) for req, _ in step.entries)
    pages_per_seq = min(
        bucket(most_pages, step=PAGE_STEP), bucket(max_pages_per_seq, step=PAGE_STEP)
    )
    arrays = _empty(num_tokens, num_seqs, pages_per_seq, _num_banned(step))
    offset = 0
    for row, (req, n) in enumerate(step.entries):
        _fill_sequence(arrays, row, offset, req, n, page_size)
        offset += n
    arrays["cu_q_lens"][len(step.entries) + 1 :] = offset
    max_q = max(n for _, n in step.entries)
    wants_logprobs = any(req.params.logprobs is not None for req, _ in step.entries)
    return StepArrays(
        **arrays,
        max_q_len=min(bucket(max_q, step=TOKEN_STEP), num_tokens),
        num_logprobs=MAX_LOGPROBS if wants_logprobs else 0,
    )


def _banned_tokens(req: Request) -> frozenset[int]:
    """The stop tokens a request may not sample yet (it is short of its min_tokens)."""
    if len(req.output_token_ids) + req.num_pending < req.params.min_tokens:
        return req.stop_token_ids
    return frozenset()


def _num_banned(step: ScheduledStep) -> int:
    """NB: a bucket (>= 4) of the most tokens any row bans, so few shapes compile."""
    return bucket(max(len(_banned_tokens(req)) for req, _ in step.entries), minimum=4)


def _empty(num_tokens: int, num_seqs: int, pages_per_seq: int, num_banned: int) -> dict:
    i32 = np.int32
    return dict(
        tokens=np.zeros(num_tokens, i32),
        positions=np.zeros(num_tokens, i32),
        slot_mapping=np.zeros(num_tokens, i32),
        page_table=np.zeros((num_seqs, pages_per_seq), i32),
        kv_lens=np.zeros(num_seqs, i32),
        cu_q_lens=np.zeros(num_seqs + 1, i32),
        logits_indices=np.zeros(num_seqs, i32),
        temperature=np.zeros(num_seqs, np.float32),
        top_k=np.zeros(num_seqs, i32),
        top_p=np.ones(num_seqs, np.float32),
        seeds=np.zeros(num_seqs, np.uint32),
        sample_steps=np.zeros(num_seqs, i32),
        banned=np.full((num_seqs, num_banned), BANNED_PAD, i32),
        replicas=np.zeros(num_seqs, i32),
    )


def _fill_sequence(arrays: dict, row: int, offset: int, req: Request, n: int, page_size: int):
    start = req.num_computed_tokens
    positions = np.arange(start, start + n, dtype=np.int32)
    pages = np.asarray(req.pages, np.int32)
    known = req.all_token_ids[start : start + n]  # shorter by the pending tokens (steps.py)
    arrays["tokens"][offset : offset + len(known)] = known
    arrays["tokens"][offset + len(known) : offset + n] = PENDING_TOKEN
    arrays["positions"][offset : offset + n] = positions
    arrays["slot_mapping"][offset : offset + n] = (
        pages[positions // page_size] * page_size + positions % page_size
    )
    arrays["page_table"][row, : len(pages)] = pages
    arrays["kv_lens"][row] = start + n
    arrays["cu_q_lens"][row + 1] = offset + n
    arrays["logits_indices"][row] = offset + n - 1
    params = req.params
    arrays["temperature"][row] = params.temperature
    arrays["top_k"][row] = params.top_k
    arrays["top_p"][row] = params.top_p
    arrays["seeds"][row] = req.seed
    arrays["sample_steps"][row] = len(req.output_token_ids) + req.num_pending
    banned = sorted(_banned_tokens(req))
    arrays["banned"][row, : len(banned)] = banned
    arrays["replicas"][row] = req.replica
