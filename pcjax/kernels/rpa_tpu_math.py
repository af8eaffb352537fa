"""The math the TPU ragged paged attention kernel's two bodies share (`pcjax.kernels.rpa_tpu`):
its static configuration, the f32 dots, one online-softmax update over a kv block, the block's
masks, and the softmax state's start and finish. Plain jax on refs and arrays; no Pallas calls.
"""

import dataclasses

import jax.numpy as jnp
from jax import lax

MASKED = -1e30  # finite, so fully masked rows never produce inf - inf


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static kernel parameters (each one recompiles)."""

    sm_scale: float
    sliding_window: int | None
    soft_cap: float | None
    page_size: int
    pages_per_seq: int
    pages_per_block: int
    block_q: int
    table_block: int  # TB: page ids per SMEM page-table row (TPU code path)
    xla_loop: bool  # the CPU variant for interpret=True ("CPU" in `rpa_tpu`'s docstring)
    indexed_loads: bool = False  # plain indexed head reads (for a pltpu.InterpretParams run)

    @property
    def block_kv(self) -> int:
        return self.pages_per_block * self.page_size


def dot(spec: str, a, b):
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jnp.einsum(spec, a, b, precision=precision, preferred_element_type=jnp.float32)


def softmax_step(cfg: KernelConfig, s, mask, m_prev, l_prev, acc_prev, pv):
    """One online-softmax update with scores `s` (f32[..., R, S]); pv(p) gives p @ V."""
    s = s * cfg.sm_scale
    if cfg.soft_cap is not None:
        s = cfg.soft_cap * jnp.tanh(s / cfg.soft_cap)
    s = jnp.where(mask, s, MASKED)
    m_new = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
    p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
    alpha = jnp.exp(m_prev - m_new)
    return m_new, alpha * l_prev + p.sum(axis=-1, keepdims=True), alpha * acc_prev + pv(p)


def masks(cfg: KernelConfig, rows: int, block, pages, first_pos, num_q, kv_len):
    """(score mask bool[R, S], fetched-and-written columns bool[S, 1]) of kv block `block`."""
    kv_pos0 = block * cfg.block_kv
    t = lax.broadcasted_iota(jnp.int32, (rows, 1), 0) % cfg.block_q  # rows are head-major
    q_pos = jnp.where(t < num_q, first_pos + t, -1)  # i32[R, 1]; padding rows see nothing
    col = kv_pos0 + lax.broadcasted_iota(jnp.int32, (1, cfg.block_kv), 1)  # i32[1, S]
    mask = col <= q_pos
    if cfg.sliding_window is not None:
        mask &= col > q_pos - cfg.sliding_window
    col_t = kv_pos0 + lax.broadcasted_iota(jnp.int32, (cfg.block_kv, 1), 0)
    kv_end = jnp.minimum(first_pos + num_q, kv_len)
    return mask, (col_t >= pages.first_page * cfg.page_size) & (col_t < kv_end)


def finish(o_ref, l_ref, acc_ref) -> None:
    l_final = l_ref[...]
    o_ref[...] = (acc_ref[...] / jnp.where(l_final > 0, l_final, 1.0)).astype(o_ref.dtype)


def init_state(m_ref, l_ref, acc_ref) -> None:
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
