"""A step's arrays laid out per data-parallel replica (host, numpy only).

The engine builds one flat `StepArrays` over every scheduled request, in its own order, with the
replica of each row in ``replicas``. The sharded step needs each replica's rows apart, padded to
common bucketed shapes, as a leading ``D`` axis that the ``"data"`` axis of the mesh splits:

==========================  =============  ===================================================
array                       shape          content
==========================  =============  ===================================================
token_index                 i32[D, Tb]     position in the flat tokens, -1 for padding
positions, slot_mapping     i32[D, Tb]     as the flat ones (0 for padding)
page_table                  i32[D, Bb, M]  the replica's rows (page ids are replica-local)
kv_lens, logits_indices     i32[D, Bb]     offsets local to the replica's tokens
cu_q_lens                   i32[D, Bb+1]
sampling fields             [D * Bb]       replica after replica (padding: greedy, no ban)
entry_rows                  i32[B]         flat row r -> its row in the [D * Bb] sample
==========================  =============  ===================================================

Tokens are gathered on the device (``token_index``) because the flat tokens may be a device
array: pending tokens taken from the step in flight (`pcjax.engine.steps`).

Example (D = 2): flat rows [a (replica 1, 3 tokens), b (replica 0, 1 token), c (replica 1,
1 token)] with flat tokens [a0 a1 a2 b0 c0 pad pad pad]: Tb = token_bucket(4) = 8, Bb = 2;
token_index = [[3, -1, ...], [0, 1, 2, 4, -1, ...]], cu_q_lens = [[0, 1, 1], [0, 3, 4]],
logits_indices = [[0, 0], [2, 3]], entry_rows = [2, 0, 3, 0 (padding)].
"""

import dataclasses

import numpy as np

from pcjax.engine.batch import TOKEN_STEP, StepArrays, bucket, token_bucket
from pcjax.sampling import BANNED_PAD


@dataclasses.dataclass(frozen=True)
class ReplicaArrays:
    """One step per replica (see the module table); ``max_q_len`` and ``num_logprobs`` are
    static in the compiled step."""

    token_index: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    page_table: np.ndarray
    kv_lens: np.ndarray
    cu_q_lens: np.ndarray
    logits_indices: np.ndarray
    temperature: np.ndarray  # f32[D * Bb]
    top_k: np.ndarray  # i32[D * Bb]
    top_p: np.ndarray  # f32[D * Bb]
    seeds: np.ndarray  # u32[D * Bb]
    sample_steps: np.ndarray  # i32[D * Bb]
    banned: np.ndarray  # i32[D * Bb, NB]
    entry_rows: np.ndarray  # i32[B]
    max_q_len: int
    num_logprobs: int


_SAMPLING = ("temperature", "top_k", "top_p", "seeds", "sample_steps", "banned")


def split_by_replica(arrays: StepArrays, num_replicas: int) -> ReplicaArrays:
    """Lays ``arrays`` out per replica (see the module docstring)."""
    q_lens = np.diff(arrays.cu_q_lens)
    num_rows = int(np.count_nonzero(q_lens))  # real rows come first, each computes >= 1 token
    replicas = arrays.replicas[:num_rows]
    if num_rows and (replicas.min() < 0 or replicas.max() >= num_replicas):
        raise ValueError(f"row replicas {sorted(set(replicas))} outside [0, {num_replicas})")
    rows_of = [np.flatnonzero(replicas == d) for d in range(num_replicas)]
    num_tokens = token_bucket(max(int(q_lens[rows].sum()) for rows in rows_of))
    num_seqs = bucket(max(len(rows) for rows in rows_of))
    out = _empty(arrays, num_replicas, num_tokens, num_seqs)
    for d, rows in enumerate(rows_of):
        _fill_replica(out, arrays, d, rows, q_lens[rows], num_seqs)
    pad = out["token_index"] < 0
    taken = np.maximum(out["token_index"], 0)
    out["positions"] = np.where(pad, 0, arrays.positions[taken]).astype(np.int32)
    out["slot_mapping"] = np.where(pad, 0, arrays.slot_mapping[taken]).astype(np.int32)
    max_q = int(q_lens.max()) if num_rows else 1
    return ReplicaArrays(
        **out,
        max_q_len=min(bucket(max_q, step=TOKEN_STEP), num_tokens),
        num_logprobs=arrays.num_logprobs,
    )


def _empty(arrays: StepArrays, num_replicas: int, num_tokens: int, num_seqs: int) -> dict:
    d, i32 = num_replicas, np.int32
    rows = d * num_seqs
    return dict(
        token_index=np.full((d, num_tokens), -1, i32),
        page_table=np.zeros((d, num_seqs, arrays.page_table.shape[1]), i32),
        kv_lens=np.zeros((d, num_seqs), i32),
        cu_q_lens=np.zeros((d, num_seqs + 1), i32),
        logits_indices=np.zeros((d, num_seqs), i32),
        temperature=np.zeros(rows, np.float32),
        top_k=np.zeros(rows, i32),
        top_p=np.ones(rows, np.float32),
        seeds=np.zeros(rows, np.uint32),
        sample_steps=np.zeros(rows, i32),
        banned=np.full((rows, arrays.banned.shape[1]), BANNED_PAD, i32),
        entry_rows=np.zeros(len(arrays.kv_lens), i32),
    )


def _fill_replica(out: dict, arrays: StepArrays, d: int, rows, q_lens, num_seqs: int) -> None:
    n = len(rows)
    if n == 0:
        return
    local_cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    starts = arrays.cu_q_lens[rows]
    index = np.concatenate([np.arange(s, s + q) for s, q in zip(starts, q_lens, strict=True)])
    out["token_index"][d, : len(index)] = index
    out["page_table"][d, :n] = arrays.page_table[rows]
    out["kv_lens"][d, :n] = arrays.kv_lens[rows]
    out["cu_q_lens"][d, : n + 1] = local_cu
    out["cu_q_lens"][d, n + 1 :] = local_cu[-1]
    out["logits_indices"][d, :n] = local_cu[1:] - 1
    base = d * num_seqs
    for name in _SAMPLING:
        out[name][base : base + n] = getattr(arrays, name)[rows]
    out["entry_rows"][rows] = base + np.arange(n)
